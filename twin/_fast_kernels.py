"""Per-element ray kernels of the fast twin: pure tensor functions.

The rays are a structure of arrays: positions ``x, y, z`` (mm, relative to the
design centre of the last element passed), unit directions ``a, b, c``,
energies ``E`` (eV), the intensities of the two polarisations ``ih, iv`` and
the 0/1 ``alive`` weight, each ``(B, N)`` (or ``(1, N)`` where every state
shares them). Per-state parameters are ``(B, k)`` tensors.

Every numeric constant reaches a kernel as a tensor, and the only Python-level
arguments are the few strings and flags that choose a formula (surface shape,
1-D or 2-D table, hard or soft edges). The same functions therefore run eagerly
(autograd included) or compiled by :func:`torch.compile`, which fuses each
element's hundred-odd element-wise operations into a few loops over the rays:
one compiled graph per element kind and formula, shared by every element of
that kind whatever its numbers.

Rotations follow xrt's conventions: ``R`` maps local to global coordinates and
row vectors transform as ``p_local = (p - c) R``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
Vec = tuple[Tensor, Tensor, Tensor]

__all__ = ["source", "slits", "mirror", "mono", "observe", "moments", "lerp1", "lerp2",
           "KERNELS"]


# --------------------------------------------------------------------------- helpers
def _col(m: Tensor, i: int, j: int) -> Tensor:
    """Entry (i, j) of a (B, 3, 3) batch of matrices, as a (B, 1) column."""
    return m[:, i, j].unsqueeze(-1)


def _to_local(x: Tensor, y: Tensor, z: Tensor, R: Tensor) -> Vec:
    """Row vectors times R: global to local components."""
    return (x * _col(R, 0, 0) + y * _col(R, 1, 0) + z * _col(R, 2, 0),
            x * _col(R, 0, 1) + y * _col(R, 1, 1) + z * _col(R, 2, 1),
            x * _col(R, 0, 2) + y * _col(R, 1, 2) + z * _col(R, 2, 2))


def _to_global(x: Tensor, y: Tensor, z: Tensor, R: Tensor) -> Vec:
    """Row vectors times R^T: local to global components."""
    return (x * _col(R, 0, 0) + y * _col(R, 0, 1) + z * _col(R, 0, 2),
            x * _col(R, 1, 0) + y * _col(R, 1, 1) + z * _col(R, 1, 2),
            x * _col(R, 2, 0) + y * _col(R, 2, 1) + z * _col(R, 2, 2))


def _to_plane_through_origin(x: Tensor, y: Tensor, z: Tensor, a: Tensor, b: Tensor,
                             c: Tensor, n: Tensor) -> Vec:
    """Positions where the rays cross the plane through 0 with normal n (3,)."""
    t = -(x * n[0] + y * n[1] + z * n[2]) / (a * n[0] + b * n[1] + c * n[2])
    return x + t * a, y + t * b, z + t * c


def _grid_index(a: Tensor, a0: Tensor, da: Tensor, last: Tensor) -> Tensor:
    """Fractional index of *a* on the grid ``a0 + k da``, clamped to ``[0, last]``; NaN
    goes to 0. Every index that the lookups derive from it is therefore in bounds, which
    lets compiled kernels skip their per-element bounds checks (see
    ``twin._fast_backend.compiled``). ``where(f > 0, ...)`` sends NaN and negatives to 0 in
    one vectorised select, where ``nan_to_num`` compiles to a scalar loop on the CPU."""
    f = (a - a0) / da
    return torch.where(f > 0, f, 0.0).minimum(last)


def lerp1(v: Tensor, g: Tensor, a: Tensor) -> Tensor:
    """Linear interpolation of values *v* on a regular grid ``g = (a0, da, n - 1, n - 2)``
    at *a*; clamped to the grid, differentiable in *a*."""
    fa = _grid_index(a, g[0], g[1], g[2])
    ia = fa.detach().floor().minimum(g[3])
    i = ia.int()
    v0 = v[i]
    return v0 + (v[i + 1] - v0) * (fa - ia)


def lerp2(v: Tensor, g: Tensor, E: Tensor, a: Tensor) -> Tensor:
    """Bilinear interpolation of row-major values *v* on a regular (energy, angle) grid
    ``g = (e0, de, ne - 1, max(ne - 2, 0), a0, da, na - 1, na - 2, na)``."""
    fe = _grid_index(E, g[0], g[1], g[2])
    fa = _grid_index(a, g[4], g[5], g[6])
    ie = fe.detach().floor().minimum(g[3])
    ia = fa.detach().floor().minimum(g[7])
    te, ta = (fe - ie).clamp(0.0, 1.0), (fa - ia).clamp(0.0, 1.0)
    ie1 = (ie + 1).minimum(g[2])
    row0, row1 = (ie * g[8]).int(), (ie1 * g[8]).int()
    j = ia.int()
    top = v[row0 + j] * (1 - ta) + v[row0 + j + 1] * ta
    bot = v[row1 + j] * (1 - ta) + v[row1 + j + 1] * ta
    return top * (1 - te) + bot * te


def _reflectivity(v: Tensor, g: Tensor, E: Tensor, ang: Tensor, two_d: bool) -> Tensor:
    return lerp2(v, g, E, ang) if two_d else lerp1(v, g, ang)


# --------------------------------------------------------------------------- source
def source(sx: Tensor, sy: Tensor, sz: Tensor, sa: Tensor, sb: Tensor, sc: Tensor,
           prm: Tensor) -> tuple[Tensor, ...]:
    """Cached source rays (1, N) perturbed per state: position (um), pointing (urad) and
    size multipliers in ``prm[:, 2:8]``. Returns positions and unit directions (B, N)."""
    x = sx * prm[:, 6:7] + prm[:, 2:3] * 1e-3
    z = sz * prm[:, 7:8] + prm[:, 3:4] * 1e-3
    a = sa + prm[:, 4:5] * 1e-6 * sb
    c = sc + prm[:, 5:6] * 1e-6 * sb
    b = sb.expand_as(a)
    inv = torch.rsqrt(a * a + b * b + c * c)
    return x, sy.expand_as(x), z, a * inv, b * inv, c * inv


# --------------------------------------------------------------------------- slits
def slits(x: Tensor, y: Tensor, z: Tensor, a: Tensor, b: Tensor, c: Tensor, alive: Tensor,
          shift: Tensor, n: Tensor, xa: Tensor, za: Tensor, lim: Tensor, size: Tensor,
          mode: str) -> tuple[Tensor, ...]:
    """Slit blades or an aperture in the plane through its design centre.

    *shift* (3,) moves the origin to that centre; *lim* is ``(B, 4)``: the blades
    (left, right, bottom, top, mm) for slits, or the aperture's offset ``(dx, dz, -, -)``.
    *size* is ``(half width, half height, soft edge width)`` in mm. *mode* is
    ``"slits"``, ``"slits_soft"``, ``"round"`` or ``"rect"``.
    Returns the positions on that plane and the new alive weights.
    """
    x, y, z = _to_plane_through_origin(x - shift[0], y - shift[1], z - shift[2], a, b, c, n)
    u = x * xa[0] + y * xa[1] + z * xa[2]
    v = x * za[0] + y * za[1] + z * za[2]
    if mode == "slits_soft":
        eps = size[2]
        inside = (torch.sigmoid((u - lim[:, 0:1]) / eps) * torch.sigmoid((lim[:, 1:2] - u) / eps)
                  * torch.sigmoid((v - lim[:, 2:3]) / eps) * torch.sigmoid((lim[:, 3:4] - v) / eps))
    elif mode == "slits":
        inside = ((u >= lim[:, 0:1]) & (u <= lim[:, 1:2]) & (v >= lim[:, 2:3])
                  & (v <= lim[:, 3:4])).to(alive.dtype)
    else:
        u, v = u - lim[:, 0:1], v - lim[:, 1:2]
        if mode == "round":
            inside = (u * u + v * v <= size[0] * size[0]).to(alive.dtype)
        else:
            inside = ((u.abs() <= size[0]) & (v.abs() <= size[1])).to(alive.dtype)
    return x, y, z, alive * inside


# --------------------------------------------------------------------------- mirrors
def _surface(shape: str, x: Tensor, y: Tensor, surf: Tensor) -> Vec:
    """Surface height f(x, y) and slopes (df/dx, df/dy) in the mirror's local frame, mm,
    for the shapes met by Newton iterations (the elliptical cylinder is met in closed
    form, :func:`_ellipse_hit`).

    *surf* (B, k) holds the per-state coefficients:

    * ``"flat"`` (also cylindrical): a bent flat with fixed ends, xrt's BentFlatMirror,
      whose design sag is compensated by the centre offset: ``(kappa, L)``;
    * ``"toroidal"``: ``(kappa, sagittal radius)``.
    """
    kappa = surf[:, 0:1]
    if shape == "toroidal":
        r = surf[:, 1:2]
        root = torch.sqrt((r * r - x * x).clamp(min=1e-12))
        # r - sqrt(r^2 - x^2) without cancellation
        return kappa * y * y / 2 + x * x / (r + root), x / root, kappa * y
    L = surf[:, 1:2]
    return kappa * (y * y - L * L / 4) / 2, torch.zeros_like(y), kappa * y


def _ellipse_hit(px: Tensor, py: Tensor, pz: Tensor, dx: Tensor, dy: Tensor, dz: Tensor,
                 surf: Tensor) -> tuple[Tensor, ...]:
    """Exact intersection of rays with the elliptical cylinder
    ``F = alpha z^2 + 2 beta y z + gamma y^2 - 2 k1 y - 2 k2 z = 0`` (local frame, mm),
    *surf* (B, 5) holding ``(alpha, beta, gamma, k1, k2)`` per state (see
    ``FastBackend._ellipse_coeffs``).

    On the ray ``p + t d`` F is a quadratic in t, ``a2 t^2 + 2 b1 t + F(p) = 0``; the
    rays start on the tangent plane at the centre, so the near root is the small one,
    taken in the form without cancellation: one square root per ray where Newton
    iterations on ``z = f(y)`` take one per step. Returns the point, the slopes
    ``(0, dz/dy)`` there and whether the ray meets the cylinder at all.
    """
    A, beta, gamma = surf[:, 0:1], surf[:, 1:2], surf[:, 2:3]
    k1, k2 = surf[:, 3:4], surf[:, 4:5]
    a2 = A * dz * dz + 2.0 * beta * dy * dz + gamma * dy * dy
    b1 = A * pz * dz + beta * (py * dz + pz * dy) + gamma * py * dy - k1 * dy - k2 * dz
    c0 = A * pz * pz + 2.0 * beta * py * pz + gamma * py * py - 2.0 * k1 * py - 2.0 * k2 * pz
    disc = b1 * b1 - a2 * c0
    met = disc >= 0
    sgn = torch.where(b1 >= 0, 1.0, -1.0)
    t = -c0 / (b1 + sgn * torch.sqrt(disc.clamp(min=0.0)))
    qx, qy, qz = px + t * dx, py + t * dy, pz + t * dz
    fy = -(beta * qz + gamma * qy - k1) / (A * qz + beta * qy - k2)
    return qx, qy, qz, torch.zeros_like(fy), fy, met


def mirror(x: Tensor, y: Tensor, z: Tensor, a: Tensor, b: Tensor, c: Tensor, E: Tensor,
           ih: Tensor, iv: Tensor, alive: Tensor, shift: Tensor, n_in: Tensor, R: Tensor,
           cpos: Tensor, surf: Tensor, size: Tensor, tab_h: Tensor, g_h: Tensor, tab_v: Tensor,
           g_v: Tensor, shape: str, two_d: bool, same_hv: bool, soft: bool,
           newton_steps: int = 3) -> tuple[Tensor, ...]:
    """Specular reflection off a mirror at pose (R (B, 3, 3), centre cpos (B, 3)).

    The rays are first carried to the plane through the design centre (small local
    numbers), then intersected exactly with the surface (the elliptical cylinder in
    closed form, :func:`_ellipse_hit`; the other shapes by Newton iterations on
    z = f(x, y) from the tangent plane), clipped by the footprint (*size*: half width,
    half length, soft edge width, mm) and weighted by the coating's reflectivity
    tables against the sine of the grazing angle, which spares an arcsine per ray:
    ``tab_h`` for the horizontal polarisation and ``tab_v`` for the vertical one (sigma
    or pi as the caller picks for the deflection plane; *same_hv* when one table serves
    both). Returns the positions,
    directions, intensities and alive weights after the mirror.
    """
    x, y, z = _to_plane_through_origin(x - shift[0], y - shift[1], z - shift[2], a, b, c, n_in)
    px, py, pz = _to_local(x - cpos[:, 0:1], y - cpos[:, 1:2], z - cpos[:, 2:3], R)
    dx, dy, dz = _to_local(a, b, c, R)
    if shape == "elliptical":
        qx, qy, qz, fx, fy, met = _ellipse_hit(px, py, pz, dx, dy, dz, surf)
    else:
        t = -pz / dz
        for _ in range(newton_steps):
            qx, qy = px + t * dx, py + t * dy
            f, fx, fy = _surface(shape, qx, qy, surf)
            t = t - (pz + t * dz - f) / (dz - fx * dx - fy * dy)
        qx, qy, qz = px + t * dx, py + t * dy, pz + t * dz
        _, fx, fy = _surface(shape, qx, qy, surf)
        met = torch.isfinite(qz)
    inv = torch.rsqrt(fx * fx + fy * fy + 1.0)
    nx, ny, nz = -fx * inv, -fy * inv, inv
    # no "t > 0" test: the rays start on the plane through the mirror centre, and those
    # that meet the surface upstream of that plane have t < 0 (they came from upstream)
    hit = ((qx.abs() <= size[0]) & (qy.abs() <= size[1]) & met & torch.isfinite(qx)
           & torch.isfinite(qy) & torch.isfinite(qz) & torch.isfinite(inv)
           & torch.isfinite(nx) & torch.isfinite(ny))
    # rays that miss are dead; finite stand-ins keep NaN out of readings and gradients
    qx, qy, qz = (torch.where(hit, qx, 0.0), torch.where(hit, qy, 0.0),
                  torch.where(hit, qz, 0.0))
    nx, ny, nz = torch.where(hit, nx, 0.0), torch.where(hit, ny, 0.0), torch.where(hit, nz, 1.0)
    dn = dx * nx + dy * ny + dz * nz
    if soft:  # soft mirror ends (the footprint runs along y)
        eps = size[2]
        hit_w = torch.where(hit, torch.sigmoid((size[1] - qy) / eps)
                            * torch.sigmoid((qy + size[1]) / eps), 0.0)
    else:
        hit_w = hit.to(alive.dtype)
    ox, oy, oz = dx - 2 * dn * nx, dy - 2 * dn * ny, dz - 2 * dn * nz
    sin_g = (-dn).clamp(min=0.0, max=1.0 - 1e-12)  # the tables run in sin(grazing angle)
    r_h = _reflectivity(tab_h, g_h, E, sin_g, two_d)
    r_v = r_h if same_hv else _reflectivity(tab_v, g_v, E, sin_g, two_d)
    # no mask here: a dead ray's intensity is never read (every reading weighs by alive),
    # and compiled for the CPU, the mask would cross from the geometry loop to the
    # table-lookup loop as a boolean array, stored and read back byte by byte
    ih, iv = ih * r_h, iv * r_v
    gx, gy, gz = _to_global(qx, qy, qz, R)
    a, b, c = _to_global(ox, oy, oz, R)
    return (gx + cpos[:, 0:1], gy + cpos[:, 1:2], gz + cpos[:, 2:3], a, b, c, ih, iv,
            alive * hit_w)


# --------------------------------------------------------------------------- DCM
#: columns of the per-state DCM geometry that :func:`mono` takes (built by
#: ``FastBackend._mono_geometry``): the crystals' normals ``n1, n2`` and in-plane axes
#: ``u`` (across) and ``v`` (along), crystal 2's centre ``c2``, crystal 2's normal seen
#: from the incoming rays ``m2``, the two reflections' direction map minus one ``Am``
#: (3 x 3, row-major), the axis ray's sines of incidence ``s`` and Bragg deviations
#: ``D``, and the arcsine's Taylor coefficients ``k`` about each of those sines: 43 in all
_N1, _U1, _V1, _N2, _U2, _V2, _C2, _M2, _AM = 0, 3, 6, 9, 12, 15, 18, 21, 24
_S1, _S2, _D1, _D2, _K1, _K2 = 33, 34, 35, 36, 37, 40


def _dot(g: Tensor, i: int, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """Per-state vector ``g[:, i:i + 3]`` dotted with the rays' components."""
    return x * g[:, i:i + 1] + y * g[:, i + 1:i + 2] + z * g[:, i + 2:i + 3]


def _asin_step(s: Tensor, g: Tensor, i: int) -> Tensor:
    """``asin(s0 + s) - asin(s0)`` for a small *s*: its Taylor series to third order with
    per-state coefficients ``g[:, i:i + 3]``. The first term left out is about
    0.1 s^4 at Bragg angles of 0.1-0.5 rad: 1e-13 rad at s = 1e-3."""
    return s * (g[:, i:i + 1] + s * (g[:, i + 1:i + 2] + s * g[:, i + 2:i + 3]))


def mono(x: Tensor, y: Tensor, z: Tensor, a: Tensor, b: Tensor, c: Tensor, E: Tensor,
         ih: Tensor, iv: Tensor, alive: Tensor, shift: Tensor, n_in: Tensor, geo: Tensor,
         ref: Tensor, size: Tensor, tab_s: Tensor, g_s: Tensor, tab_p: Tensor, g_p: Tensor,
         two_d: bool, same_sp: bool, crystal: bool) -> tuple[Tensor, ...]:
    """The two flat reflectors of a double-crystal (or double-multilayer) monochromator.

    *geo* (B, 43) is the crystals' geometry in the frame of the rays
    (the columns listed above it; crystal 1 centred at the origin); *size* is (half width, half
    length of crystal 1, half length of crystal 2), mm. For crystals the tables hold the
    intrinsic Bragg curve against the deviation from the kinematic angle ``asin(kb / E)``
    and *ref* is ``(E0, kb, c1, c2, c3)``: a reference energy (eV), ``hc / 2d`` (eV) and
    the arcsine's Taylor coefficients about ``kb / E0``. For multilayers the tables run
    against the sine of the grazing angle.

    The Bragg angles are large (0.1-0.5 rad), and rotating the rays into the crystals'
    frames and back would leave ~1e-7 rad of rounding on every float32 direction (3 um
    at the sample). Nothing here rotates a ray. The outgoing direction is the incoming
    one plus ``Am d``, the two reflections' map minus one, which is small for a pair
    of nearly parallel crystals; each sine of incidence is the axis ray's (per state,
    from float64) plus a small term linear in the ray's deviation from the axis; the
    Bragg deviation is the axis ray's plus the arcsine's steps for that term and for the
    energy. Every large quantity is a per-state constant, and every per-ray quantity is
    small, so float32 keeps its relative precision.
    """
    g = geo
    x, y, z = _to_plane_through_origin(x - shift[0], y - shift[1], z - shift[2], a, b, c, n_in)
    # the rays' deviation from the axis, its component along the axis without cancellation
    ea, ec = a - n_in[0], c - n_in[2]
    eb = -(ea * (a + n_in[0]) + ec * (c + n_in[2])) / (b + n_in[1])
    sig1 = -_dot(g, _N1, ea, eb, ec)
    sig2 = -_dot(g, _M2, ea, eb, ec)  # crystal 2's normal seen by the incoming rays
    s1, s2 = g[:, _S1:_S1 + 1] + sig1, g[:, _S2:_S2 + 1] + sig2
    # crystal 1, met from the plane through its centre (the path may be < 0)
    t1 = _dot(g, _N1, x, y, z) / s1
    x, y, z = x + t1 * a, y + t1 * b, z + t1 * c
    hu, hv = _dot(g, _U1, x, y, z), _dot(g, _V1, x, y, z)
    hit = (hu.abs() <= size[0]) & (hv.abs() <= size[1]) & torch.isfinite(hu) \
        & torch.isfinite(hv)
    # after crystal 1: d1 = d - 2 (n1 . d) n1 = d + 2 s1 n1 (only carries the positions)
    a1, b1, c1 = (a + 2 * s1 * g[:, _N1:_N1 + 1], b + 2 * s1 * g[:, _N1 + 1:_N1 + 2],
                  c + 2 * s1 * g[:, _N1 + 2:_N1 + 3])
    # crystal 2, downstream of crystal 1: n2 . d1 = -s2
    cx, cy, cz = g[:, _C2:_C2 + 1], g[:, _C2 + 1:_C2 + 2], g[:, _C2 + 2:_C2 + 3]
    rx, ry, rz = x - cx, y - cy, z - cz
    t2 = _dot(g, _N2, rx, ry, rz) / s2
    rx, ry, rz = rx + t2 * a1, ry + t2 * b1, rz + t2 * c1
    hu, hv = _dot(g, _U2, rx, ry, rz), _dot(g, _V2, rx, ry, rz)
    hit = hit & (hu.abs() <= size[0]) & (hv.abs() <= size[2]) & (t2 > 0) \
        & torch.isfinite(hu) & torch.isfinite(hv)
    if crystal:  # deviations from the kinematic Bragg angle of each ray's energy
        beta = ref[1] * (ref[0] - E) / (E * ref[0])  # kb / E - kb / E0
        db = beta * (ref[2] + beta * (ref[3] + beta * ref[4]))
        dev1 = g[:, _D1:_D1 + 1] + _asin_step(sig1, g, _K1) - db
        dev2 = g[:, _D2:_D2 + 1] + _asin_step(sig2, g, _K2) - db
    else:  # multilayer tables run in sin(grazing angle)
        dev1, dev2 = s1, s2
    rs = _reflectivity(tab_s, g_s, E, dev1, two_d) * _reflectivity(tab_s, g_s, E, dev2, two_d)
    rp = rs if same_sp else (_reflectivity(tab_p, g_p, E, dev1, two_d)
                             * _reflectivity(tab_p, g_p, E, dev2, two_d))
    # vertical diffraction: the horizontal polarisation is sigma
    ih, iv = ih * rs, iv * rp  # no mask: see mirror()
    x, y, z = (torch.where(hit, rx + cx, 0.0), torch.where(hit, ry + cy, 0.0),
               torch.where(hit, rz + cz, 0.0))
    # the outgoing direction d + Am d: the large parts of the two reflections cancel
    # in float64, before any ray is touched
    a, b, c = (a + _dot(g, _AM, a, b, c), b + _dot(g, _AM + 3, a, b, c),
               c + _dot(g, _AM + 6, a, b, c))
    return x, y, z, a, b, c, ih, iv, alive * hit.to(alive.dtype)


# --------------------------------------------------------------------------- observers
def observe(x: Tensor, y: Tensor, z: Tensor, a: Tensor, b: Tensor, c: Tensor, ih: Tensor,
            iv: Tensor, alive: Tensor, w0: Tensor, cpt: Tensor, n: Tensor, xa: Tensor,
            za: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rays on the plane of an observation point centred at *cpt* (B, 3), normal *n*:
    local positions (um) along *xa* and *za*, and weights (photons/s); rays that are
    dead or not finite weigh exactly 0 at position 0."""
    cx, cy, cz = cpt[:, 0:1], cpt[:, 1:2], cpt[:, 2:3]
    x, y, z = x - cx, y - cy, z - cz
    t = -(x * n[0] + y * n[1] + z * n[2]) / (a * n[0] + b * n[1] + c * n[2])
    x, y, z = x + t * a, y + t * b, z + t * c
    u = (x * xa[0] + y * xa[1] + z * xa[2]) * 1e3
    v = (x * za[0] + y * za[1] + z * za[2]) * 1e3
    w = torch.where(alive > 0, (ih + iv) * w0 * alive, 0.0)
    ok = (w > 0) & torch.isfinite(u) & torch.isfinite(v)
    return torch.where(ok, u, 0.0), torch.where(ok, v, 0.0), torch.where(ok, w, 0.0)


# --------------------------------------------------------------------------- readings
def moments(x: Tensor, y: Tensor, w: Tensor, half: Tensor,
            fov: bool) -> tuple[Tensor, ...]:
    """Weights inside the field of view (*half*: half width and height, um, when *fov*)
    and the weighted moments per state: flux, centroids (um) and rms sizes (um).
    Dark states get finite stand-ins (the caller masks them)."""
    if fov:
        w = torch.where((x.abs() <= half[0]) & (y.abs() <= half[1]), w, 0.0)
    flux = w.sum(-1)
    safe = flux.clamp(min=1e-30).unsqueeze(-1)  # finite gradients even where a point is dark
    cx = (w * x).sum(-1, keepdim=True) / safe
    cy = (w * y).sum(-1, keepdim=True) / safe
    rx = torch.sqrt(((w * (x - cx) ** 2).sum(-1, keepdim=True) / safe).clamp(min=1e-30))
    ry = torch.sqrt(((w * (y - cy) ** 2).sum(-1, keepdim=True) / safe).clamp(min=1e-30))
    return w, flux, cx.squeeze(-1), cy.squeeze(-1), rx.squeeze(-1), ry.squeeze(-1)


#: the kernels by name, as :class:`twin._fast_backend.FastBackend` calls them
KERNELS = {"source": source, "slits": slits, "mirror": mirror, "mono": mono,
           "observe": observe, "moments": moments}
