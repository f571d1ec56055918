"""Tiny CT/MR-like blob images shared by the models tests (a body ellipse with a liver ellipse)."""
import numpy as np


def phantom(n: int, size: int = 32, seed: int = 0, modality: str = "CT") -> tuple[np.ndarray, np.ndarray]:
    """Body ellipse + 'liver' ellipse; CT: bright liver on grey body, MR: dark liver on a brighter body."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body_v, liver_v = (0.0, 0.7) if modality == "CT" else (0.4, -0.5)
    images = np.full((n, size, size), -1.0, np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        body = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1
        cy, cx, r = rng.uniform(0.4, 0.6), rng.uniform(0.3, 0.45), rng.uniform(0.12, 0.2)
        liver = ((yy - cy) / r) ** 2 + ((xx - cx) / (1.3 * r)) ** 2 < 1
        images[i][body] = body_v
        images[i][liver & body] = liver_v
        masks[i] = liver & body
    images += rng.normal(0, 0.03, images.shape).astype(np.float32)
    return np.clip(images, -1, 1), masks
