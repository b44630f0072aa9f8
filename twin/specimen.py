"""A simulated specimen for mapping: a few features on a flat background.

Scanning X-ray microscopy moves the sample through the focus and records a
signal (fluorescence, transmission) at each position. The twin already knows
where the focus sits on the sample and how large it is: the ``sample``
diagnostic reports the beam in the sample's own frame. :class:`Specimen`
turns that into a signal: the specimen's map convolved with the focal spot,
times the flux on the sample.

Features are Gaussian particles and rectangular domains (sharp edges, the
hard case for a map). Their convolution with a Gaussian spot has a closed
form (a Gaussian of the summed widths; a product of error functions), so a map
is exact at any focus size and costs microseconds per point.

Coordinates are um in the sample's frame (x horizontal, y vertical); moving the
stage by +x moves the beam by -x on the specimen, as on the beamline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import erf

from twin.errors import ConfigError

__all__ = ["Feature", "Specimen", "FWHM_TO_SIGMA"]

#: sigma = FWHM * FWHM_TO_SIGMA for a Gaussian
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One feature of a specimen.

    Parameters
    ----------
    kind : {"particle", "domain"}
        A Gaussian particle (``width_um``/``height_um`` are its FWHM) or a
        rectangular domain with sharp edges (its full width and height).
    x_um, y_um : float
        Centre in the sample frame, um.
    width_um, height_um : float
        Size, um (> 0).
    amplitude : float
        Map value added at the feature's centre (dimensionless).
    angle_deg : float
        Orientation of the feature's width axis from the x axis, degrees.
    """

    kind: Literal["particle", "domain"]
    x_um: float
    y_um: float
    width_um: float
    height_um: float
    amplitude: float
    angle_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("particle", "domain"):
            raise ConfigError(f"Feature.kind must be 'particle' or 'domain', got {self.kind!r}")
        for name in ("x_um", "y_um", "width_um", "height_um", "amplitude", "angle_deg"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"Feature.{name} must be a finite number, got {v!r}")
        if self.width_um <= 0 or self.height_um <= 0:
            raise ConfigError(f"Feature width and height must be > 0 um, got "
                              f"{self.width_um} x {self.height_um}")


@dataclass(frozen=True, kw_only=True)
class Specimen:
    """Features on a flat background.

    Parameters
    ----------
    features : tuple of Feature
        Their amplitudes and the background are map values (dimensionless).
    background : float
        Map value away from every feature.
    efficiency : float
        Detected photons per incident photon per unit map value (fluorescence
        yield times the detector's solid angle and efficiency).
    name : str
    """

    features: tuple[Feature, ...] = field(default_factory=tuple)
    background: float = 0.0
    efficiency: float = 1e-6
    name: str = "specimen"

    def __post_init__(self) -> None:
        if not math.isfinite(self.background) or self.background < 0:
            raise ConfigError(f"Specimen.background must be a finite number >= 0, "
                              f"got {self.background!r}")
        if not math.isfinite(self.efficiency) or self.efficiency <= 0:
            raise ConfigError(f"Specimen.efficiency must be a finite number > 0, "
                              f"got {self.efficiency!r}")

    @classmethod
    def default(cls, seed: int = 0, *, field_um: float = 80.0) -> Specimen:
        """A test specimen in a square field of *field_um* centred on 0: three
        particles (3-8 um FWHM) and two domains (6-14 um), at random orientations (a
        grid that happens to line up with a feature's edges is a coincidence a real
        sample does not offer), never overlapping the edge."""
        if not (math.isfinite(field_um) and field_um >= 30):
            raise ConfigError(f"field_um must be >= 30 um, got {field_um!r}")
        rng = np.random.default_rng(seed)
        half = field_um / 2
        feats: list[Feature] = []
        for i in range(5):
            kind: Literal["particle", "domain"] = "particle" if i < 3 else "domain"
            w, h = (rng.uniform(3, 8, 2) if kind == "particle" else rng.uniform(6, 14, 2))
            margin = 0.5 * max(w, h) + 3
            for _ in range(200):  # keep features apart, so each is its own region
                x, y = rng.uniform(-half + margin, half - margin, 2)
                if all(math.hypot(x - f.x_um, y - f.y_um) >
                       0.6 * (max(w, h) + max(f.width_um, f.height_um)) + 4 for f in feats):
                    break
            feats.append(Feature(kind=kind, x_um=float(x), y_um=float(y), width_um=float(w),
                                 height_um=float(h), amplitude=float(rng.uniform(0.5, 1.0)),
                                 angle_deg=float(rng.uniform(0.0, 180.0))))
        return cls(features=tuple(feats), background=0.02, name=f"test specimen (seed {seed})")

    def value(self, x_um: np.ndarray | float, y_um: np.ndarray | float,
              spot_fwhm_x_um: float = 0.0, spot_fwhm_y_um: float = 0.0) -> np.ndarray:
        """Signal per incident photon with the spot centred at (*x_um*, *y_um*).

        The specimen's map convolved with a Gaussian spot of the given FWHM
        (0 gives the map itself). Vectorised over positions.
        """
        x = np.asarray(x_um, dtype=float)
        y = np.asarray(y_um, dtype=float)
        sx, sy = (max(float(v), 0.0) * FWHM_TO_SIGMA if math.isfinite(v) else 0.0
                  for v in (spot_fwhm_x_um, spot_fwhm_y_um))
        out = np.full(np.broadcast(x, y).shape, self.background, dtype=float)
        for f in self.features:
            c, s = math.cos(math.radians(f.angle_deg)), math.sin(math.radians(f.angle_deg))
            dx, dy = x - f.x_um, y - f.y_um
            u, v = c * dx + s * dy, -s * dx + c * dy  # the feature's own axes
            # the spot's spread along them (its x-y correlation in that frame is neglected:
            # exact for a round spot or an axis-aligned feature)
            su = math.hypot(sx * c, sy * s)
            sv = math.hypot(sx * s, sy * c)
            if f.kind == "particle":
                fu, fv = f.width_um * FWHM_TO_SIGMA, f.height_um * FWHM_TO_SIGMA
                vu, vv = fu * fu + su * su, fv * fv + sv * sv
                out = out + f.amplitude * (fu * fv / math.sqrt(vu * vv)) * np.exp(
                    -0.5 * (u * u / vu + v * v / vv))
            else:
                out = out + f.amplitude * _box(u, f.width_um, su) * _box(v, f.height_um, sv)
        return out

    def counts(self, flux: float, centroid_x_um: float, centroid_y_um: float,
               fwhm_x_um: float, fwhm_y_um: float, exposure_s: float) -> float:
        """Detected signal (photons) for one exposure of a beam seen at the sample.

        Parameters are the sample diagnostic's reading (the beam in the sample
        frame) and the exposure, s. No beam (NaN centroid) gives 0.
        """
        if not (math.isfinite(flux) and math.isfinite(centroid_x_um)
                and math.isfinite(centroid_y_um)) or flux <= 0:
            return 0.0
        v = self.value(centroid_x_um, centroid_y_um, fwhm_x_um, fwhm_y_um)
        return float(flux * exposure_s * self.efficiency * float(v))

    def feature_mask(self, x_um: np.ndarray, y_um: np.ndarray, *, level: float = 0.1
                     ) -> np.ndarray:
        """Where the specimen differs from its background by more than *level* times
        the weakest feature's amplitude (the area a map must cover)."""
        weakest = min((f.amplitude for f in self.features), default=1.0)
        return np.abs(self.value(x_um, y_um) - self.background) > level * weakest


def _box(d: np.ndarray, width: float, sigma: float) -> np.ndarray:
    """A top-hat of *width* centred at 0, convolved with a Gaussian of *sigma*."""
    h = 0.5 * width
    if sigma <= 0:
        return ((d >= -h) & (d <= h)).astype(float)
    s = sigma * math.sqrt(2.0)
    return 0.5 * (erf((d + h) / s) - erf((d - h) / s))
