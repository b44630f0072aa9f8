"""Closed-form synchrotron-optics relations used to lay out a beamline.

Nothing here traces rays: these are the textbook formulas that turn a design
photon energy into an undulator gap, a Bragg angle or a fixed-exit offset, so
that a preset only states what an engineer would state (the energy, the
crystal, the fixed exit) and the design motor positions follow.

Units are given per function; energies are in eV throughout.
"""

from __future__ import annotations

import math

from twin.errors import ConfigError

__all__ = [
    "HC_EV_ANGSTROM",
    "ELECTRON_REST_ENERGY_MEV",
    "SI_A0",
    "silicon_expansion",
    "crystal_d_spacing_A",
    "undulator_field_T",
    "undulator_K",
    "harmonic_energy_eV",
    "gap_for_energy_mm",
    "bragg_angle_rad",
    "energy_from_bragg_eV",
    "multilayer_bragg_angle_rad",
]

#: h*c in eV*Angstrom (CODATA 2018: 12398.419843320026)
HC_EV_ANGSTROM = 12398.419843320026
#: electron rest energy in MeV (CODATA 2018)
ELECTRON_REST_ENERGY_MEV = 0.51099895

#: Si lattice constant at 19.9 C, Angstrom (O'Mara, Handbook of Semiconductor
#: Silicon Technology, 1990; the value xrt uses).
SI_A0 = 5.430710
#: sum h^2 + k^2 + l^2 of the supported reflections
_HKL2 = {"Si111": 3, "Si220": 8, "Si311": 11, "Si333": 27}


def silicon_expansion(t_K: float) -> float:
    """Relative elongation dL/L of silicon at *t_K* (Swenson, J. Phys. Chem. Ref.
    Data 12, 179 (1983); under 1 % error), unitless."""
    t = t_K
    if 0.0 <= t < 30.0:
        return -2.154537e-4
    if 30.0 <= t < 130.0:
        return (-2.303956e-14 * t**4 + 7.834799e-11 * t**3 - 1.724143e-8 * t**2
                + 8.396104e-7 * t - 2.276144e-4)
    if 130.0 <= t < 293.0:
        return -1.223001e-11 * t**3 + 1.532991e-8 * t**2 - 3.263667e-6 * t - 5.217231e-5
    if 293.0 <= t <= 1000.0:
        return -1.161022e-12 * t**3 + 3.311476e-9 * t**2 + 1.124129e-6 * t - 5.844535e-4
    raise ConfigError(f"silicon temperature {t_K} K is outside the 0-1000 K parameterisation")


def crystal_d_spacing_A(crystal: str, temperature_K: float = 297.15) -> float:
    """Lattice-plane spacing of a Si reflection at a temperature, Angstrom.

    ``d = a(T) / sqrt(h^2 + k^2 + l^2)``, with ``a(T)`` from :data:`SI_A0` and
    :func:`silicon_expansion`. An LN2-cooled (77 K) crystal is 2.3e-4 shorter
    than at room temperature: 2.3 eV at 10 keV, more than the Si(111) bandpass.
    """
    if crystal not in _HKL2:
        raise ConfigError(f"unknown crystal {crystal!r}; known: {sorted(_HKL2)}")
    a = SI_A0 * (silicon_expansion(temperature_K) - silicon_expansion(273.15 + 19.9) + 1.0)
    return a / math.sqrt(_HKL2[crystal])


def undulator_field_T(gap_mm: float, period_mm: float, coeffs: tuple[float, float, float]) -> float:
    """Peak field of a hybrid planar undulator.

    Uses the fit ``B = a * exp(-r * (b - c * r))`` with ``r = gap / period``,
    the form used by ESRF's XOP (``xbfield``: a = 0.95 * 3.44 T, b = 5.08,
    c = 1.54 for NdFeB hybrid magnets).

    Parameters
    ----------
    gap_mm, period_mm : float
        Magnetic gap and period, mm.
    coeffs : tuple of float
        ``(a [T], b, c)``.

    Returns
    -------
    float
        Peak field, T.
    """
    if gap_mm <= 0 or period_mm <= 0:
        raise ConfigError(f"gap ({gap_mm} mm) and period ({period_mm} mm) must be > 0")
    a, b, c = coeffs
    r = gap_mm / period_mm
    return a * math.exp(-r * (b - c * r))


def undulator_K(gap_mm: float, period_mm: float, coeffs: tuple[float, float, float]) -> float:
    """Deflection parameter ``K = 0.0934 * period[mm] * B[T]`` (dimensionless)."""
    return 0.0933729 * period_mm * undulator_field_T(gap_mm, period_mm, coeffs)


def harmonic_energy_eV(K: float, period_mm: float, electron_GeV: float, harmonic: int = 1) -> float:
    """On-axis energy of undulator harmonic *n*.

    ``E_n = n * 2 * gamma^2 * h c / (period * (1 + K^2 / 2))``.
    """
    gamma = electron_GeV * 1e3 / ELECTRON_REST_ENERGY_MEV
    lam1_A = period_mm * 1e7 / (2.0 * gamma**2) * (1.0 + 0.5 * K * K)
    return harmonic * HC_EV_ANGSTROM / lam1_A


def gap_for_energy_mm(
    energy_eV: float,
    period_mm: float,
    coeffs: tuple[float, float, float],
    electron_GeV: float,
    harmonic: int,
    gap_range_mm: tuple[float, float],
) -> float:
    """Gap (mm) that puts harmonic *harmonic* at *energy_eV*, by bisection.

    Raises
    ------
    ConfigError
        If the energy cannot be reached on that harmonic within *gap_range_mm*.
    """
    lo, hi = gap_range_mm

    def f(g: float) -> float:
        k = undulator_K(g, period_mm, coeffs)
        return harmonic_energy_eV(k, period_mm, electron_GeV, harmonic) - energy_eV

    flo, fhi = f(lo), f(hi)
    if flo * fhi > 0:
        e_lo, e_hi = flo + energy_eV, fhi + energy_eV
        raise ConfigError(
            f"{energy_eV:.1f} eV is not reachable on harmonic {harmonic}: gaps {lo}-{hi} mm "
            f"give {e_lo:.1f}-{e_hi:.1f} eV; choose another harmonic or energy"
        )
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        fm = f(mid)
        if flo * fm <= 0:
            hi = mid
        else:
            lo, flo = mid, fm
    return 0.5 * (lo + hi)


def bragg_angle_rad(energy_eV: float, d_spacing_A: float) -> float:
    """Kinematic Bragg angle ``asin(hc / (2 d E))`` in rad."""
    s = HC_EV_ANGSTROM / (2.0 * d_spacing_A * energy_eV)
    if not 0 < s < 1:
        raise ConfigError(
            f"{energy_eV:.1f} eV is below the cut-off of a reflection with d = {d_spacing_A:.4f} A "
            f"(needs E > {HC_EV_ANGSTROM / (2 * d_spacing_A):.1f} eV)"
        )
    return math.asin(s)


def energy_from_bragg_eV(theta_rad: float, d_spacing_A: float) -> float:
    """Photon energy (eV) selected at Bragg angle *theta_rad* (kinematic)."""
    s = math.sin(theta_rad)
    if s <= 0:
        return float("inf")
    return HC_EV_ANGSTROM / (2.0 * d_spacing_A * s)


def multilayer_bragg_angle_rad(energy_eV: float, period_nm: float) -> float:
    """First-order kinematic Bragg angle of a multilayer of period *period_nm* (rad).

    Refraction shifts the real peak by a few 0.1 mrad; the twin's design
    position of a multilayer monochromator is refined on the reflectivity curve
    by the tracing backend.
    """
    return bragg_angle_rad(energy_eV, period_nm * 10.0)
