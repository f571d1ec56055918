"""The CHAOS-layout phantom: synthetic abdominal CT and MR written as CHAOS distributes them (DICOM + PNG).

The real CHAOS download cannot be fetched everywhere, so this is the project's embedded default data set. It is read
by `datasets.chaos` through exactly the code path of the real download:

    CT/<id>/DICOM_anon/i0000,0000b.dcm ...        CT/<id>/Ground/liver_GT_000.png ...     (1-bit PNG, liver = 1)
    MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/IMG-SSSS-NNNNN.dcm   MR/<id>/T1DUAL/Ground/IMG-SSSS-NNNNN.png
    MR/<id>/T2SPIR/DICOM_anon/IMG-SSSS-NNNNN.dcm                      MR/<id>/T2SPIR/Ground/IMG-SSSS-NNNNN.png
    MR masks are grey-coded: liver 63, right kidney 126, left kidney 189, spleen 252.

Why the anatomy is this detailed: the experiment asks whether synthetic MR helps when real MR is scarce. That only
means something if one MR patient cannot cover the others, so bodies vary (size, eccentricity, lobed livers that
cross the midline or not, organ positions) and MR appearance varies (gain, smooth bias field, fat fraction, liver to
muscle contrast, stomach/bowel content), while the liver stays learnable. Liver and spleen are alike on CT but not on
MR: that is where EssNet's segmentation branch has something to do.

Every patient is a 3D function of physical coordinates (mm), evaluated per slab of slices on a coarse grid as soft
tissue occupancies (partial-volume edges), composited, upsampled bilinearly to the matrix size, then given noise
(Gaussian for CT, Rician for MR). CT and MR patients are different bodies: each (modality, patient) has its own seed.
Everything is deterministic by `seed`, UIDs included, so a rerun writes byte-identical files. numpy, pydicom and
Pillow only: no torch, no ray.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from datasets.errors import ConfigError, EssgridError

log = logging.getLogger(__name__)

# Patient ids of the CHAOS training sets (CT and MR are numbered independently); more patients continue upwards.
CT_IDS = (1, 2, 5, 6, 8, 10, 14, 16, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30)
MR_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)
MR_CODES = {"liver": 63, "right_kidney": 126, "left_kidney": 189, "spleen": 252}
MR_SEQUENCES = ("T1DUAL", "T2SPIR")
_LABELLED = ("liver", "right_kidney", "left_kidney", "spleen")  # label 1..4, as datasets.chaos numbers them
_SLAB = 8          # slices rendered at once (bounds memory at 512x512)
_MAX_COARSE = 160  # coarse grid for the anatomy; bilinear upsampling gives the rest
# MR difficulty knobs, tuned with bench/phantom_difficulty.py (a small U-Net on 1 patient must reach a test Dice of
# 0.6-0.9 on others, and 4 patients must do better): harsher values let single patients defeat the network.
_MR_NOISE = (0.015, 0.035)        # Rician sigma, fraction of the gain
_MR_BIAS = (0.08, 0.18)            # std of the bias field's quadratic coefficients (log scale)
_T2_LIVER_TO_MUSCLE = (1.4, 1.8)  # T2SPIR liver / muscle signal
_MR_MAX_FOV_RATIO = 1.35          # MR field of view <= this times the body width (floored at the nominal minimum)


def patient_ids(modality: str, n: int) -> list[str]:
    """The first `n` CHAOS-like patient ids of a modality ("1", "2", "5", ...), continuing past the real ones."""
    base = CT_IDS if modality == "CT" else MR_IDS
    return [str(i) for i in base[:n]] + [str(base[-1] + k) for k in range(1, n - len(base) + 1)]


# ---------------------------------------------------------------------------------------------------------------
# anatomy: soft occupancies of a patient's tissues

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


@dataclass
class _Field:
    """A smooth random field of physical coordinates: a sum of random cosines (resolution independent)."""

    omega: np.ndarray  # [K, 3] cycles per mm, times 2 pi
    phase: np.ndarray  # [K]
    weight: np.ndarray  # [K]

    @classmethod
    def draw(cls, rng: np.random.Generator, wavelength: tuple[float, float], k: int = 10,
             unit_gradient: bool = False) -> _Field:
        direction = rng.standard_normal((k, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        omega = direction * (2 * np.pi / rng.uniform(*wavelength, size=(k, 1)))
        # unit_gradient: |grad f| ~ 1, so |f| reads as a distance in mm (used for vessel tubes)
        weight = (1.0 / np.linalg.norm(omega, axis=1) if unit_gradient else np.ones(k)) * math.sqrt(2.0 / k)
        return cls(omega, rng.uniform(0, 2 * np.pi, k), weight)

    def __call__(self, x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        out = 0.0
        for (ox, oy, od), ph, w in zip(self.omega, self.phase, self.weight):
            out = out + w * np.cos(ox * x + oy * y + (od * d + ph))
        return np.asarray(out, dtype=np.float32)


@dataclass
class _Blob:
    """An ellipsoid (centre, radii in mm, in-plane rotation): the building block of every organ."""

    c: tuple[float, float, float]
    r: tuple[float, float, float]
    angle: float = 0.0

    def q(self, x: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Normalised radius: < 1 inside."""
        dx, dy = x - self.c[0], y - self.c[1]
        if self.angle:
            ca, sa = math.cos(self.angle), math.sin(self.angle)
            dx, dy = ca * dx + sa * dy, -sa * dx + ca * dy
        return np.sqrt((dx / self.r[0]) ** 2 + (dy / self.r[1]) ** 2 + ((d - self.c[2]) / self.r[2]) ** 2)

    def alpha(self, x, y, d, edge: float, grow: float = 0.0) -> np.ndarray:
        """Soft occupancy with an edge about `edge` mm wide; `grow` mm moves the surface outwards."""
        rm = min(self.r[0], self.r[1])
        return _sigmoid(((1.0 - self.q(x, y, d)) * rm + grow) / edge)


def _union_alpha(blobs: list[_Blob], x, y, d, edge: float, wobble: np.ndarray | float = 0.0) -> np.ndarray:
    """Soft occupancy of a union of ellipsoids, its surface moved by `wobble` (mm, a smooth field)."""
    signed = None
    for b in blobs:
        s = (1.0 - b.q(x, y, d)) * min(b.r[0], b.r[1])
        signed = s if signed is None else np.maximum(signed, s)
    return _sigmoid((signed + wobble) / edge)


@dataclass
class _Body:
    """One patient's anatomy (all in mm; x to the patient's left, y posterior, d downwards from the liver dome)."""

    a: float
    b: float
    power: float
    taper: float
    t_fat: float
    t_muscle: float
    height: float
    y_spine: float
    r_vert: float
    disc_phase: float
    aorta: _Blob
    ivc: _Blob
    liver: list[_Blob]
    spleen: _Blob
    spleen_hollow: _Blob
    stomach: _Blob
    gas_level: float
    kidneys: tuple[_Blob, _Blob]
    gallbladder: _Blob | None
    heart: _Blob
    colon_x: tuple[float, float]
    loops: list[tuple[_Blob, float | None]]  # (loop, gas level or None)
    rib_phase: float
    visceral_fat: float
    wobble: _Field
    texture: _Field
    vessels: tuple[_Field, _Field]
    vessel_radius: float


def _draw_body(rng: np.random.Generator) -> _Body:
    u = rng.uniform
    a = u(125.0, 170.0)
    b = a * u(0.62, 0.84)
    t_fat, t_muscle = u(6.0, 32.0), u(7.0, 14.0)
    A, B = a - t_fat - t_muscle, b - t_fat - t_muscle  # abdominal cavity half-axes
    H = u(130.0, 175.0)
    y_spine = b - t_fat - u(42.0, 55.0)
    r_vert = u(15.0, 20.0)
    s = u(0.85, 1.15)
    liver = [
        _Blob((-0.48 * A + rng.normal(0, 0.05 * A), -0.05 * B + rng.normal(0, 0.08 * B), u(0.35, 0.45) * H),
              (0.48 * A * s, 0.74 * B * u(0.85, 1.1), 0.46 * H), u(-0.3, 0.3)),
        _Blob((-0.6 * A, u(-0.1, 0.15) * B, u(0.7, 0.8) * H),
              (0.3 * A * u(0.7, 1.2), 0.45 * B * u(0.7, 1.1), 0.27 * H * u(0.8, 1.3))),  # inferior tip (Riedel)
        _Blob((u(-0.15, 0.2) * A, -0.45 * B, u(0.22, 0.34) * H),
              (u(0.18, 0.5) * A, u(0.2, 0.32) * B, u(0.14, 0.25) * H), u(-0.4, 0.2)),  # left lobe
        _Blob((-0.12 * A, 0.1 * B, 0.4 * H), (0.15 * A, 0.18 * B, 0.18 * H)),  # caudate
    ]
    for _ in range(rng.integers(1, 4)):  # patient-specific bumps on the right lobe
        ang = u(-np.pi, np.pi)
        liver.append(_Blob((-0.48 * A + 0.4 * A * math.cos(ang), -0.05 * B + 0.55 * B * math.sin(ang),
                            u(0.2, 0.7) * H), (u(0.12, 0.25) * A, u(0.15, 0.3) * B, u(0.12, 0.25) * H)))
    ss = u(0.8, 1.25)
    spleen = _Blob((0.62 * A, 0.35 * B, u(0.25, 0.45) * H), (0.22 * A * ss, 0.38 * B * ss, 0.22 * H * ss),
                   u(-0.6, -0.2))
    spleen_hollow = _Blob((spleen.c[0] - 0.2 * A * ss, spleen.c[1] - 0.05 * B, spleen.c[2]),
                          (0.16 * A * ss, 0.3 * B * ss, 0.3 * H * ss), spleen.angle)
    st = u(0.6, 1.3)
    stomach = _Blob((0.3 * A, -0.3 * B, u(0.25, 0.4) * H), (0.3 * A * st, 0.35 * B * st, 0.28 * H * st), u(-0.5, 0.5))
    kr = (u(24, 30), u(20, 26), u(45, 58))
    kidneys = (_Blob((-(r_vert + u(38, 50)), y_spine - u(0, 10), u(0.68, 0.85) * H), kr, u(0.3, 0.6)),
               _Blob((r_vert + u(38, 50), y_spine - u(5, 15), u(0.5, 0.68) * H), kr, -u(0.3, 0.6)))
    gallbladder = (_Blob((-0.22 * A, -0.35 * B, u(0.55, 0.7) * H), (u(12, 20), u(14, 22), u(25, 40)), u(-0.5, 0.5))
                   if rng.random() < 0.7 else None)
    loops = []
    for _ in range(rng.integers(8, 15)):
        loop = _Blob((u(-0.6, 0.7) * A, u(-0.75, 0.3) * B, u(0.45, 1.7) * H), (u(10, 26), u(10, 26), u(20, 60)),
                     u(-np.pi, np.pi))
        loops.append((loop, u(-0.5, 0.3) if rng.random() < 0.4 else None))
    return _Body(
        a=a, b=b, power=u(2.0, 2.6), taper=u(-0.08, 0.12), t_fat=t_fat, t_muscle=t_muscle, height=H,
        y_spine=y_spine, r_vert=r_vert, disc_phase=u(0, 30),
        aorta=_Blob((r_vert * 0.5 + 3, y_spine - r_vert - 10, 0.0), (u(9, 13),) * 2 + (1e9,)),
        ivc=_Blob((-(r_vert + 8), y_spine - r_vert - 12, 0.0), (u(11, 15), u(8, 11), 1e9)),
        liver=liver, spleen=spleen, spleen_hollow=spleen_hollow, stomach=stomach, gas_level=u(-0.6, 0.1),
        kidneys=kidneys, gallbladder=gallbladder,
        heart=_Blob((0.15 * A, -0.2 * B, -u(50, 75)), (0.5 * A, 0.55 * B, 80.0)),
        colon_x=(-0.72 * A, 0.72 * A), loops=loops, rib_phase=u(0, 1), visceral_fat=u(0.35, 0.9),
        wobble=_Field.draw(rng, (60.0, 140.0)), texture=_Field.draw(rng, (6.0, 25.0), k=32),
        vessels=(_Field.draw(rng, (50.0, 110.0), unit_gradient=True),
                 _Field.draw(rng, (50.0, 110.0), unit_gradient=True)),
        vessel_radius=u(2.0, 4.0),
    )


def _superellipse(x, y, ra, rb, p: float) -> np.ndarray:
    """Normalised radius of a superellipse |x/ra|^p + |y/rb|^p = 1 (p = 2: an ellipse)."""
    return (np.abs(x / ra) ** p + np.abs(y / rb) ** p) ** (1.0 / p)


def _tissues(body: _Body, x: np.ndarray, y: np.ndarray, d: np.ndarray, edge: float) -> list[tuple[str, np.ndarray]]:
    """Soft occupancy of each tissue, in painting order (a later tissue covers an earlier one).

    x, y: [1, N, N] mm; d: [Z, 1, 1] mm. Every occupancy broadcasts to [Z, N, N].
    """
    H = body.height
    grow = 1.0 + body.taper * (d / H - 0.5)
    a, b = body.a * grow, body.b * grow

    def shell(inset: float) -> np.ndarray:
        r = _superellipse(x, y, a - inset, b - inset, body.power)
        return _sigmoid((1.0 - r) * (b - inset) / edge)

    cavity = shell(body.t_fat + body.t_muscle)
    A, B = body.a - body.t_fat - body.t_muscle, body.b - body.t_fat - body.t_muscle
    diaphragm = -8.0 + 30.0 * (x / A) ** 2 + 45.0 * np.maximum(y / B, 0.0) ** 2
    below = _sigmoid((d - diaphragm) / edge)  # under the diaphragm
    in_abdomen = cavity * below
    out: list[tuple[str, np.ndarray]] = [
        ("fat", shell(0.0)),
        ("muscle", shell(body.t_fat)),
        ("visceral", cavity),
        ("lung", cavity * (1.0 - below)),
        ("heart", body.heart.alpha(x, y, d, edge) * (1.0 - below)),
    ]
    ys, rv = body.y_spine, body.r_vert
    para = [_Blob((sx * (rv + 14), ys + rv + 22, 0.0), (26.0, 22.0, 1e9)) for sx in (-1, 1)]
    psoas = [_Blob((sx * (rv + 14), ys - 2, 1.6 * H), (16.0, 16.0, 1.1 * H)) for sx in (-1, 1)]
    out.append(("muscle", _union_alpha(para + psoas, x, y, d, edge)))
    # ribs: small bony sections along the cavity wall in the upper abdomen, drifting with depth
    ang = np.linspace(-2.7, 2.7, 9)[:, None, None, None] + body.rib_phase + 0.004 * d[None]
    rx, ry = np.cos(ang) * (A + body.t_muscle / 2), np.sin(ang) * (B + body.t_muscle / 2)
    rib = _sigmoid((6.0 - np.sqrt((x[None] - rx) ** 2 + (y[None] - ry) ** 2)) / edge).max(axis=0)
    out.append(("bone", rib * _sigmoid((0.75 * H - d) / (4 * edge))))
    # colon (ascending right, descending left) and small-bowel loops
    for cx in body.colon_x:
        tube = _sigmoid((22.0 - np.sqrt((x - cx) ** 2 + (y + 0.05 * B) ** 2)) / edge)
        out.append(("colon", tube * _sigmoid((d - 0.8 * H) / (3 * edge)) * in_abdomen))
    for k, (loop, level) in enumerate(body.loops):
        al = loop.alpha(x, y, d, edge) * in_abdomen
        out.append((f"loop{k}", al))
        if level is not None:
            out.append(("gas", al * _sigmoid((loop.c[1] + level * loop.r[1] - y) / edge)))
    st = body.stomach
    wall = st.alpha(x, y, d, edge) * in_abdomen
    content = st.alpha(x, y, d, edge, grow=-4.0) * in_abdomen
    out += [("stomach_wall", wall), ("stomach", content),
            ("gas", content * _sigmoid((st.c[1] + body.gas_level * st.r[1] - y) / edge))]
    liver = _union_alpha(body.liver, x, y, d, edge, wobble=8.0 * body.wobble(x, y, d)) * in_abdomen
    out.append(("liver", liver))
    tube = np.sqrt(body.vessels[0](x, y, d) ** 2 + body.vessels[1](x, y, d) ** 2)
    out.append(("liver_vessel", liver * _sigmoid((body.vessel_radius - tube) / edge)))
    if body.gallbladder is not None:
        out.append(("gallbladder", body.gallbladder.alpha(x, y, d, edge) * in_abdomen))
    out.append(("spleen", body.spleen.alpha(x, y, d, edge) * (1 - body.spleen_hollow.alpha(x, y, d, edge))
                * in_abdomen))
    for name, kid in zip(("right_kidney", "left_kidney"), body.kidneys):
        out.append((name, kid.alpha(x, y, d, edge) * in_abdomen))
        inner = _Blob((kid.c[0] * 0.85, kid.c[1] - 4, kid.c[2]), tuple(0.5 * r for r in kid.r), kid.angle)
        out.append((name + "_medulla", inner.alpha(x, y, d, edge) * in_abdomen))
    out.append(("aorta", body.aorta.alpha(x, y, d, edge)))
    out.append(("ivc", body.ivc.alpha(x, y, d, edge) * below))
    vert = _Blob((0.0, ys, 0.0), (rv, rv * 0.85, 1e9))
    out.append(("bone", vert.alpha(x, y, d, edge)))
    out.append(("marrow", vert.alpha(x, y, d, edge, grow=-2.5)))
    disc = _sigmoid((np.cos(2 * np.pi * (d - body.disc_phase) / 32.0) - 0.8) / 0.05)
    out.append(("disc", vert.alpha(x, y, d, edge) * disc))
    arch = _Blob((0.0, ys + rv + 16, 0.0), (rv * 1.2, 10.0, 1e9))
    out.append(("bone", arch.alpha(x, y, d, edge)))
    out.append(("csf", _Blob((0.0, ys + rv + 9, 0.0), (7.0, 7.0, 1e9)).alpha(x, y, d, edge)))
    return out


def _composite(tissues: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Final weight of each tissue (alpha times what no later tissue covers); background ("air") gets the rest."""
    cover = np.ones(np.broadcast_shapes(*(t.shape for _, t in tissues)), np.float32)
    weights = []
    for name, alpha in reversed(tissues):
        weights.append((name, cover * alpha))
        cover = cover * (1.0 - alpha)
    weights.append(("air", cover))
    return weights[::-1]


def _label_of(name: str) -> int:
    """Which CHAOS label a tissue's weight counts towards (0: none)."""
    for k, organ in enumerate(_LABELLED, start=1):
        if name == organ or name.startswith(organ + "_"):
            return k
    return 0


# ---------------------------------------------------------------------------------------------------------------
# contrast: per-tissue values of one patient in one sequence

def _ct_contrast(rng: np.random.Generator, body: _Body) -> tuple[dict[str, float], dict[str, float], float]:
    """HU per tissue (portal venous phase), texture amplitude per tissue, noise sigma."""
    u = rng.uniform
    liver = u(85.0, 135.0)
    fat = u(-115.0, -85.0)
    soft = u(35.0, 55.0)
    hu = {"air": -1000.0, "fat": fat, "muscle": soft, "visceral": body.visceral_fat * fat
          + (1 - body.visceral_fat) * soft, "lung": u(-880, -800), "heart": u(120, 170), "bone": u(500, 800),
          "marrow": u(180, 280), "disc": u(70, 100), "csf": u(5, 20), "colon": u(-350, -50), "gas": -1000.0,
          "stomach_wall": soft + 10, "stomach": u(0, 40), "liver": liver, "liver_vessel": liver + u(25, 55),
          "gallbladder": u(0, 20), "spleen": liver + u(-12, 12), "right_kidney": u(150, 200),
          "right_kidney_medulla": u(90, 130), "aorta": u(140, 200), "ivc": liver + u(0, 30)}
    hu["left_kidney"], hu["left_kidney_medulla"] = hu["right_kidney"], hu["right_kidney_medulla"]
    oral = rng.random() < 0.25  # positive oral contrast in some patients
    for k in range(len(body.loops)):
        hu[f"loop{k}"] = u(150, 350) if oral and rng.random() < 0.7 else u(0, 60)
    tex = {"liver": 6.0, "spleen": 6.0, "visceral": 15.0, "colon": 120.0, "muscle": 5.0, "marrow": 40.0,
           "stomach": 10.0}
    return hu, tex, u(8.0, 16.0)


def _mr_contrast(rng: np.random.Generator, body: _Body, sequence: str) -> dict[str, tuple[float, float]]:
    """(water, fat) signal per tissue for one sequence; T1 out-of-phase is |water - fat| after compositing.

    Only the liver's own values are deliberately close to muscle's; spleen and kidneys differ from the liver in
    both sequences (unlike CT), and stomach/bowel contents vary from patient to patient.
    """
    u = rng.uniform
    if sequence == "T2SPIR":
        muscle = u(0.28, 0.4)
        liver = muscle * u(*_T2_LIVER_TO_MUSCLE)
        fat_left = u(0.03, 0.2)  # incomplete fat suppression
        water = {"air": 0.0, "fat": 0.02, "muscle": muscle, "visceral": (1 - body.visceral_fat) * muscle,
                 "lung": 0.03, "heart": u(0.2, 0.9), "bone": 0.03, "marrow": u(0.25, 0.45), "disc": u(0.6, 1.0),
                 "csf": u(1.5, 2.2), "colon": u(0.2, 1.2), "gas": 0.01, "stomach_wall": muscle * 1.2,
                 "stomach": u(0.2, 1.4), "liver": liver, "liver_vessel": liver * (u(1.3, 2.0) if rng.random() < 0.5
                                                                                  else u(0.3, 0.7)),
                 "gallbladder": u(1.5, 2.4), "spleen": liver * u(1.5, 2.2), "right_kidney": liver * u(1.6, 2.4),
                 "aorta": u(0.05, 0.3) if rng.random() < 0.7 else u(0.8, 1.4), "ivc": u(0.2, 1.2)}
        water["right_kidney_medulla"] = water["right_kidney"] * u(1.1, 1.4)
        loops = [u(0.2, 1.4) for _ in body.loops]  # fluid brighter than 1.4 squeezed the liver into a few grey levels
        fat_signal = {"fat": fat_left, "visceral": body.visceral_fat * fat_left, "marrow": 0.5 * fat_left}
    else:
        muscle = u(0.45, 0.65)
        ff = u(0.0, 0.2)  # liver fat fraction: darker liver out of phase in steatosis
        liver = u(0.85, 1.1)
        water = {"air": 0.0, "fat": 0.12, "muscle": muscle, "visceral": (1 - body.visceral_fat) * muscle,
                 "lung": 0.03, "heart": u(0.4, 0.8), "bone": 0.03, "marrow": u(0.3, 0.5), "disc": u(0.4, 0.6),
                 "csf": u(0.15, 0.3), "colon": u(0.2, 0.7), "gas": 0.01, "stomach_wall": muscle,
                 "stomach": u(0.1, 0.9), "liver": liver * (1 - ff), "liver_vessel": liver * u(0.3, 0.6),
                 "gallbladder": u(0.2, 0.9), "spleen": liver * u(0.6, 0.85), "right_kidney": liver * u(0.6, 0.8),
                 "aorta": u(0.2, 1.0), "ivc": u(0.3, 0.9)}
        water["right_kidney_medulla"] = water["right_kidney"] * u(0.7, 0.9)
        loops = [u(0.2, 0.9) for _ in body.loops]
        fat_t1 = u(1.1, 1.5)
        fat_signal = {"fat": fat_t1, "visceral": body.visceral_fat * fat_t1, "marrow": u(0.4, 0.7),
                      "liver": liver * ff * 1.2, "colon": 0.2}
    water["left_kidney"], water["left_kidney_medulla"] = water["right_kidney"], water["right_kidney_medulla"]
    for k, v in enumerate(loops):
        water[f"loop{k}"] = v
    return {name: (w, fat_signal.get(name, 0.0)) for name, w in water.items()}


# ---------------------------------------------------------------------------------------------------------------
# rendering: coarse occupancies -> full-size image and labels

@dataclass(frozen=True)
class _Geometry:
    """Where a series' pixels sit: matrix, field of view, body offset and rotation, slice depths."""

    size: int
    fov: float
    offset: tuple[float, float]
    rotation: float
    depths: np.ndarray  # d (mm below the liver dome) of each slice, in file order

    @property
    def pixel(self) -> float:
        return self.fov / self.size


def _upsample(a: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of the last two axes from [.., m, m] to [.., n, n] (both grids span the same field of view).

    Index arithmetic rather than an interpolation-matrix product: BLAS threads on a busy machine made the matrix
    form several times slower.
    """
    m = a.shape[-1]
    if m == n:
        return a
    pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    lo = np.minimum(np.floor(pos).astype(np.intp), m - 2)
    frac = (pos - lo).astype(np.float32)
    a = a.take(lo, axis=-1) * (1 - frac) + a.take(lo + 1, axis=-1) * frac
    frac = frac[:, None]
    return a.take(lo, axis=-2) * (1 - frac) + a.take(lo + 1, axis=-2) * frac


def _render(body: _Body, geo: _Geometry, values: dict[str, np.ndarray], texture: dict[str, float],
            relative: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield slabs of (signal maps at full size, uint8 labels 0..4), slab by slab in file order.

    `values` maps a tissue to one value per output channel (an array [C]); channel c of the slab is
    sum_k weight_k * (value_k[c] + texture_k * field), the texture term scaled by value_k[c] when `relative`
    (MR: multiplicative texture; CT: additive HU). Labels are the argmax of the labelled organs' weights.
    """
    n = geo.size
    nc = min(n, _MAX_COARSE)
    step = geo.fov / nc
    centre = (np.arange(nc, dtype=np.float32) - (nc - 1) / 2) * step
    X, Y = centre[None, None, :] - geo.offset[0], centre[None, :, None] - geo.offset[1]
    cr, sr = math.cos(geo.rotation), math.sin(geo.rotation)
    x, y = cr * X + sr * Y, -sr * X + cr * Y
    edge = max(0.8, 0.4 * step)
    channels = len(next(iter(values.values())))
    for start in range(0, len(geo.depths), _SLAB):
        d = geo.depths[start:start + _SLAB].astype(np.float32)[:, None, None]
        weights = _composite(_tissues(body, x, y, d, edge))
        field = body.texture(x, y, d)
        shape = (len(d), nc, nc)
        signal = np.zeros((channels,) + shape, np.float32)
        organ = np.zeros((len(_LABELLED) + 1,) + shape, np.float32)
        for name, w in weights:
            w = np.broadcast_to(w, shape)
            v = np.asarray(values[name], np.float32)
            signal += v[:, None, None, None] * w
            amp = texture.get(name, 0.0) or texture.get(name.rstrip("0123456789"), 0.0)
            if amp:
                signal += (amp * v[:, None, None, None] if relative else amp) * (w * field)
            organ[_label_of(name)] += w
        yield _upsample(signal, n), np.argmax(_upsample(organ, n), axis=0).astype(np.uint8)  # [C, Z, n, n], [Z, n, n]


# ---------------------------------------------------------------------------------------------------------------
# DICOM and PNG writing

def _ds(v: float) -> str:
    """A DS value that always fits the 16-character limit."""
    return f"{round(float(v), 4):.10g}"


def _uid(*parts: object) -> str:
    """A UID derived from `parts` (seed, modality, patient, series, slice): reruns give the same UIDs.

    pydicom's root with entropy sources is deterministic; prefix=None would ignore them and draw a random UUID.
    """
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _series_template(modality: str, patient_id: str, geo: _Geometry, spacing: float, thickness: float,
                     study_uid: str, series_uid: str, series_number: int, description: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = "ESSGRID_PHANTOM"
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY", "M_FFE", "M"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = modality
    ds.Manufacturer = "essgrid phantom"
    ds.SeriesDescription = description
    ds.PatientName = f"PHANTOM^{modality}_{patient_id}"
    ds.PatientID = f"{modality}{patient_id}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = _uid(study_uid, "frame")
    ds.StudyID, ds.SeriesNumber = patient_id, series_number
    ds.PatientPosition = "FFS" if modality == "CT" else "HFS"
    ds.SliceThickness = _ds(thickness)
    ds.SpacingBetweenSlices = _ds(spacing)
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = geo.size
    ds.PixelSpacing = [_ds(geo.pixel), _ds(geo.pixel)]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1000", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "50", "400"
    else:
        ds.MagneticFieldStrength = "1.5"
        ds.ScanningSequence = "GR" if description.startswith("T1") else "SE"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = "FS" if description == "T2SPIR" else ""
        ds.MRAcquisitionType = "2D"
    return ds


def _write_slice(ds: Dataset, path: Path, pixels: np.ndarray, k: int, z: float, geo: _Geometry,
                 sop_uid: str) -> None:
    """Write one slice by filling the per-slice tags of the series template (reused: no per-file copy)."""
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    half = (geo.size - 1) / 2 * geo.pixel
    ds.ImagePositionPatient = [_ds(-half), _ds(-half), _ds(z)]
    ds.SliceLocation = _ds(z)
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_png(path: Path, mask: np.ndarray, one_bit: bool) -> None:
    Image.fromarray(mask.astype(bool) if one_bit else mask.astype(np.uint8)).save(path)


# ---------------------------------------------------------------------------------------------------------------
# patients

def _rng(seed: int, modality: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 1 if modality == "CT" else 2, index]))


def _geometry(rng: np.random.Generator, body: _Body, size: int, slices: tuple[int, int], fov: tuple[float, float],
              nominal: float, max_fov_ratio: float | None = None) -> tuple[_Geometry, float]:
    """Matrix, field of view and slice depths; the slice spacing grows when few slices must still span the liver.

    `max_fov_ratio` caps the field of view at that multiple of the body's width (but never below `fov[0]`): a small
    body in a large field of view shrinks to a few dozen pixels at 64x64, which made one phantom MR patient an
    outlier no other patient prepares a network for.
    """
    n = int(rng.integers(slices[0], slices[1] + 1))
    above = rng.uniform(12.0, 40.0)          # first slice this far above the liver dome
    spacing = max(nominal, (above + body.height * 1.05 + 10.0) / max(n - 1, 1))  # ends >= 10 mm below the tip
    spacing = round(spacing, 2)  # positions then print exactly in the DICOM tags
    width = 2 * body.a * (1 + abs(body.taper))
    f = rng.uniform(*fov)
    if max_fov_ratio is not None:
        f = min(f, max(fov[0], max_fov_ratio * width))
    f = max(f, width + 30.0)
    geo = _Geometry(size, f, (rng.uniform(-12, 12), rng.uniform(-5, 20)), math.radians(rng.uniform(-6, 6)),
                    -above + spacing * np.arange(n))
    return geo, spacing


def _write_ct(out: Path, patient_id: str, rng: np.random.Generator, size: int, slices: tuple[int, int],
              seed: int) -> None:
    body = _draw_body(rng)
    geo, spacing = _geometry(rng, body, size, slices, (320.0, 410.0), 3.0)
    hu, tex, sigma = _ct_contrast(rng, body)
    values = {k: np.array([v]) for k, v in hu.items()}
    image_dir, ground_dir = out / "DICOM_anon", out / "Ground"
    image_dir.mkdir(parents=True)
    ground_dir.mkdir()
    z_top = round(rng.uniform(1000.0, 1700.0), 1)
    study = _uid(seed, "CT", patient_id, "study")
    ds = _series_template("CT", patient_id, geo, spacing, spacing, study, _uid(seed, "CT", patient_id, "series"),
                          int(rng.integers(2, 9)), "phantom portal venous")
    k = 0
    for signal, labels in _render(body, geo, values, tex, relative=False):
        noise = rng.standard_normal(signal.shape[1:], dtype=np.float32) * sigma
        stored = np.clip(np.rint(signal[0] + noise + 1000.0), 0, 4095).astype(np.uint16)
        for img, lab in zip(stored, labels):
            z = z_top - k * spacing  # table position decreases with the file index, as in the real sample
            _write_slice(ds, image_dir / f"i{k:04d},0000b.dcm", img, k, z, geo, _uid(seed, "CT", patient_id, k))
            _write_png(ground_dir / f"liver_GT_{k:03d}.png", lab == 1, one_bit=True)
            k += 1


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise: what a magnitude MR image holds."""
    re = signal + rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    im = rng.standard_normal(signal.shape, dtype=np.float32) * sigma
    return np.sqrt(re * re + im * im)


def _bias(rng: np.random.Generator, geo: _Geometry, strength: float) -> np.ndarray:
    """Smooth multiplicative field [Z, n, n] (coil shading): exp of a random quadratic over the field of view."""
    n = geo.size
    t = np.linspace(-1, 1, n, dtype=np.float32)
    zs = np.linspace(-1, 1, len(geo.depths), dtype=np.float32)[:, None, None]
    c = rng.normal(0, strength, 7)
    xx, yy = t[None, None, :], t[None, :, None]
    return np.exp(c[0] * xx + c[1] * yy + c[2] * xx ** 2 + c[3] * yy ** 2 + c[4] * xx * yy + c[5] * zs
                  + c[6] * zs * yy).astype(np.float32)


def _write_mr(out: Path, patient_id: str, rng: np.random.Generator, size: int, slices: tuple[int, int],
              sequences: tuple[str, ...], seed: int) -> None:
    body = _draw_body(rng)
    study = _uid(seed, "MR", patient_id, "study")
    texture = {"liver": 0.06, "spleen": 0.06, "visceral": 0.12, "colon": 0.5, "muscle": 0.05,
               "loop": 0.15, "stomach": 0.2, "marrow": 0.2}
    series_base = int(rng.integers(1, 5))
    for s_index, sequence in enumerate(MR_SEQUENCES):
        if sequence not in sequences:
            continue
        geo, spacing = _geometry(rng, body, size, slices, (350.0, 480.0), rng.uniform(6.0, 9.0), _MR_MAX_FOV_RATIO)
        contrast = _mr_contrast(rng, body, sequence)
        gain = float(np.exp(rng.uniform(np.log(300.0), np.log(1500.0))))
        sigma = gain * rng.uniform(*_MR_NOISE)
        bias = _bias(rng, geo, rng.uniform(*_MR_BIAS))
        number = series_base + 2 * s_index
        seq_dir = out / sequence
        ground_dir = seq_dir / "Ground"
        if sequence == "T1DUAL":
            phases = {"InPhase": (seq_dir / "DICOM_anon" / "InPhase", 4.6), "OutPhase": (seq_dir / "DICOM_anon" /
                                                                                          "OutPhase", 2.3)}
            values = {k: np.array(v) for k, v in contrast.items()}  # channels: water, fat
            tr = 150.0
        else:
            phases = {"T2SPIR": (seq_dir / "DICOM_anon", rng.uniform(70.0, 80.0))}
            values = {k: np.array([w + f]) for k, (w, f) in contrast.items()}
            tr = rng.uniform(1000.0, 1800.0)
        writers = {}
        for phase, (folder, te) in phases.items():
            folder.mkdir(parents=True)
            ds = _series_template("MR", patient_id, geo, spacing, spacing * 0.9, study,
                                  _uid(seed, "MR", patient_id, sequence, phase), number, sequence)
            ds.EchoTime, ds.RepetitionTime = _ds(te), _ds(tr)
            ds.FlipAngle = "80" if sequence == "T1DUAL" else "90"
            writers[phase] = (folder, ds)
        ground_dir.mkdir()
        z_top = round(rng.uniform(-50.0, 150.0), 1)
        k = 0
        for signal, labels in _render(body, geo, values, texture, relative=True):
            b = bias[k:k + labels.shape[0]] * gain
            if sequence == "T1DUAL":
                maps = {"InPhase": signal[0] + signal[1], "OutPhase": np.abs(signal[0] - signal[1])}
            else:
                maps = {"T2SPIR": signal[0]}
            stored = {p: np.clip(np.rint(_rician(rng, np.maximum(m, 0) * b, sigma)), 0, 65535).astype(np.uint16)
                      for p, m in maps.items()}
            for j in range(labels.shape[0]):
                z = z_top - k * spacing
                for phase, (folder, ds) in writers.items():
                    # T1DUAL: out of phase odd, in phase even numbers (one acquisition, interleaved echoes)
                    num = 2 * k + (2 if phase == "InPhase" else 1) if sequence == "T1DUAL" else k + 1
                    _write_slice(ds, folder / f"IMG-{number:04d}-{num:05d}.dcm", stored[phase][j], k, z, geo,
                                 _uid(seed, "MR", patient_id, sequence, phase, k))
                grey = np.zeros(labels.shape[1:], np.uint8)
                for code, organ in enumerate(_LABELLED, start=1):
                    grey[labels[j] == code] = MR_CODES[organ]
                gnum = 2 * k + 2 if sequence == "T1DUAL" else k + 1
                _write_png(ground_dir / f"IMG-{number:04d}-{gnum:05d}.png", grey, one_bit=False)
                k += 1


# ---------------------------------------------------------------------------------------------------------------
# public

def write_phantom(out: str | Path, ct_patients: int = 20, mr_patients: int = 20, seed: int = 0, *,
                  ct_size: int = 512, mr_size: int = 256, ct_slices: tuple[int, int] = (80, 100),
                  mr_slices: tuple[int, int] = (26, 34), sequences: tuple[str, ...] = MR_SEQUENCES) -> Path:
    """Write a CHAOS-layout phantom tree: `out/CT/<id>/...` and `out/MR/<id>/...`, as the download lays them out.

    The defaults are CHAOS-like (CT 512x512, 80-100 slices 3 mm apart; MR 256x256, 26-34 slices 6-9 mm apart); the
    size and slice-count overrides let tests and the quick preset write small trees fast. A slice spacing grows
    beyond nominal when too few slices are asked for to span the liver with margins.

    Args:
        out: folder to write; must not exist, or be empty.
        ct_patients, mr_patients: patient counts (0 leaves that modality out). CT and MR are different bodies.
        seed: everything (anatomy, contrast, noise, UIDs) follows from it; equal seeds write identical bytes.
        ct_size, mr_size: matrix sizes (square).
        ct_slices, mr_slices: (min, max) slices per series, drawn per patient (and per MR sequence).
        sequences: MR sequences to write, from ("T1DUAL", "T2SPIR").
    Returns:
        `out` as a Path.
    Raises:
        ConfigError: a count, size, slice range or sequence out of range.
        EssgridError: `out` exists and is not an empty folder.
    """
    for name, v, lo in (("ct_patients", ct_patients, 0), ("mr_patients", mr_patients, 0), ("ct_size", ct_size, 16),
                        ("mr_size", mr_size, 16)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name}: {v!r} must be an int >= {lo}")
    if ct_patients + mr_patients == 0:
        raise ConfigError("ct_patients, mr_patients: both 0; the phantom needs at least one patient")
    for name, v in (("ct_slices", ct_slices), ("mr_slices", mr_slices)):
        if len(v) != 2 or not all(isinstance(s, int) for s in v) or not 2 <= v[0] <= v[1]:
            raise ConfigError(f"{name}: {v!r} must be (min, max) ints with 2 <= min <= max")
    sequences = (sequences,) if isinstance(sequences, str) else tuple(sequences)
    if not sequences or any(s not in MR_SEQUENCES for s in sequences):
        raise ConfigError(f"sequences: {sequences!r} must be a non-empty subset of {MR_SEQUENCES}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EssgridError(f"{out}: exists and is not an empty folder; the phantom is written into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for i, pid in enumerate(patient_ids("CT", ct_patients)):
        log.info("phantom CT patient %s (%d/%d)", pid, i + 1, ct_patients)
        _write_ct(out / "CT" / pid, pid, _rng(seed, "CT", i), ct_size, tuple(ct_slices), seed)
    for i, pid in enumerate(patient_ids("MR", mr_patients)):
        log.info("phantom MR patient %s (%d/%d)", pid, i + 1, mr_patients)
        _write_mr(out / "MR" / pid, pid, _rng(seed, "MR", i), mr_size, tuple(mr_slices), sequences, seed)
    return out
