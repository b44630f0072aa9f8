"""Motor kinematics, apart from Channel Access: trapezoidal moves, backlash, stop.

:class:`AxisMotion` is the motion logic of one simulated motor, in the motor's
*dial* coordinates and engineering units, as a small object with no I/O (the
ophyd-async pattern). The motor record PV group (:mod:`ioc_sim.motor_record`)
asks it where the motor is at a given time; the twin asks it where the *load*
is, which differs from the motor by the mechanics' lost motion.

Model
-----
* A move is one or two trapezoidal segments: acceleration ``velocity / accel_s``
  (motor record VELO and ACCL), cruise, deceleration to rest at the target.
* Backlash correction (motor record BDST, BVEL): when a move runs against the
  sign of BDST, the motor first goes to ``target - bdst`` at VELO, then makes the
  final approach of ``bdst`` at BVEL, so every move ends in BDST's direction.
  The motor record checks only the target against its soft limits, so a move to
  a limit could take its backlash point past it. Here the backlash point is
  clipped to the soft limits the caller passes: a move to a limit makes a
  shorter final approach, and no position is ever beyond the soft limits.
* Lost motion: the mechanics lose ``mechanical_backlash`` of travel when a move
  *ends* in the negative direction; the load then sits that far below the motor
  until the next move that ends in the positive direction. With BDST equal to
  the mechanical backlash (the default the IOC sets), every move ends positive
  and the load sits where the motor does.
* Stop: the motor decelerates at the same rate and comes to rest; the target
  becomes where it stops.
* Hardware travel: a motor that reaches ``travel_low`` or ``travel_high`` stops
  there and reports the limit switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Segment", "AxisMotion"]


@dataclass(frozen=True)
class Segment:
    """One trapezoidal move from rest (or from speed *v0*) to rest at *end*.

    Parameters
    ----------
    t0 : float
        Start time, s.
    start, end : float
        Positions, dial units.
    vmax : float
        Cruise speed, units/s (> 0).
    accel : float
        Acceleration, units/s^2 (> 0; ``inf`` for instant).
    v0 : float
        Speed at *t0* along the direction of travel, units/s (>= 0).
    """

    t0: float
    start: float
    end: float
    vmax: float
    accel: float
    v0: float = 0.0

    @property
    def direction(self) -> int:
        """+1, -1, or 0 for a null move."""
        return (self.end > self.start) - (self.end < self.start)

    def _profile(self) -> tuple[float, float, float, float]:
        """(peak speed, accel time, cruise time, decel time)."""
        d = abs(self.end - self.start)
        a, v0 = self.accel, min(self.v0, self.vmax)
        if d == 0:
            return 0.0, 0.0, 0.0, 0.0
        if math.isinf(a):
            return self.vmax, 0.0, d / self.vmax, 0.0
        d_acc = (self.vmax ** 2 - v0 ** 2) / (2 * a)
        d_dec = self.vmax ** 2 / (2 * a)
        if d_acc + d_dec <= d:
            return self.vmax, (self.vmax - v0) / a, (d - d_acc - d_dec) / self.vmax, self.vmax / a
        vp = math.sqrt(max(v0 ** 2, (2 * a * d + v0 ** 2) / 2))
        return vp, (vp - v0) / a, 0.0, vp / a

    @property
    def duration(self) -> float:
        """Time the segment takes, s."""
        _, ta, tc, td = self._profile()
        return ta + tc + td

    def state(self, t: float) -> tuple[float, float]:
        """(position, signed velocity) at time *t* (s)."""
        s = self.direction
        if s == 0 or t <= self.t0:
            return (self.start, s * self.v0 if t >= self.t0 else 0.0)
        vp, ta, tc, td = self._profile()
        v0 = min(self.v0, self.vmax)
        a = self.accel
        tau = t - self.t0
        if tau >= ta + tc + td:
            return self.end, 0.0
        if tau < ta:
            dist, v = v0 * tau + 0.5 * a * tau ** 2, v0 + a * tau
        elif tau < ta + tc:
            d_acc = v0 * ta + 0.5 * a * ta ** 2
            dist, v = d_acc + vp * (tau - ta), vp
        else:
            d_acc = v0 * ta + 0.5 * a * ta ** 2
            u = tau - ta - tc
            dist, v = d_acc + vp * tc + vp * u - 0.5 * a * u ** 2, vp - a * u
        dist = min(dist, abs(self.end - self.start))
        return self.start + s * dist, s * v


@dataclass
class AxisMotion:
    """Where one motor is, and where it is going; dial units and seconds.

    Parameters
    ----------
    position : float
        Initial dial position.
    velocity, accel_s : float
        Slew speed (units/s) and time to reach it (s), motor record VELO and ACCL.
    bdst, bvel : float
        Backlash distance (signed, units) and backlash speed (units/s).
    mechanical_backlash : float
        Lost motion of the mechanics (>= 0, units).
    travel_low, travel_high : float
        Hardware travel (limit switches), dial units.
    resolution : float
        Motor step (MRES), units: targets are rounded to whole steps.
    """

    position: float
    velocity: float
    accel_s: float
    bdst: float
    bvel: float
    mechanical_backlash: float
    travel_low: float
    travel_high: float
    resolution: float
    segments: list[Segment] = field(default_factory=list)
    lost: float = 0.0
    hit_low: bool = False
    hit_high: bool = False
    last_direction: int = 1
    #: the limits of the current move (dial); a stop never ends beyond them
    _bounds: tuple[float, float] = (-math.inf, math.inf)

    # ------------------------------------------------------------------ queries
    def state(self, t: float) -> tuple[float, float]:
        """Dial (position, velocity) of the motor at time *t*; advances the plan."""
        while self.segments:
            seg = self.segments[0]
            if t < seg.t0 + seg.duration:
                p, v = seg.state(t)
                return self._clip_travel(p, v, t)
            if not self.travel_low <= seg.end <= self.travel_high:
                # the switch was reached before the segment's end
                return self._clip_travel(seg.end, float(seg.direction), t)
            self.position = seg.end
            if seg.direction:
                self.last_direction = seg.direction
                self._settle_backlash(seg.direction)
            self.segments.pop(0)
        return self.position, 0.0

    def moving(self, t: float) -> bool:
        """True while a move is in progress at time *t*."""
        self.state(t)
        return bool(self.segments)

    def load_position(self, t: float) -> float:
        """Where the mechanics (and so the beam optics) are: motor minus lost motion."""
        p, v = self.state(t)
        if v > 0:
            return p  # pushing forward: the backlash gap is closed on this side
        if v < 0:
            return p - self.mechanical_backlash
        return p + self.lost

    def end_time(self) -> float:
        """When the current plan ends (s); the last segment's end."""
        if not self.segments:
            return -math.inf
        last = self.segments[-1]
        return last.t0 + last.duration

    # ------------------------------------------------------------------ commands
    def quantise(self, target: float) -> float:
        """*target* rounded to a whole number of motor steps."""
        return round(target / self.resolution) * self.resolution

    def move_to(self, target: float, t: float,
                bounds: tuple[float, float] | None = None) -> float:
        """Start a move to dial *target* at time *t*; returns the quantised target.

        A move requested while moving first decelerates to rest, then goes on.

        Parameters
        ----------
        target : float
            Dial position to go to; the caller has checked it against *bounds*.
        t : float
            Time of the request, s.
        bounds : (float, float), optional
            Dial soft limits (low, high). The backlash approach point is clipped
            to them, so no part of the move goes beyond a limit. Without them,
            the hardware travel.
        """
        lo, hi = bounds if bounds is not None else (self.travel_low, self.travel_high)
        self._bounds = (lo, hi)
        target = self.quantise(target)
        p, v = self.state(t)
        self.hit_low = self.hit_high = False
        segments: list[Segment] = []
        t_start = t
        if v != 0:
            stop = self._stop_segment(p, v, t)
            segments.append(stop)
            p, t_start = stop.end, stop.t0 + stop.duration
        accel = self.velocity / self.accel_s if self.accel_s > 0 else math.inf
        direction = (target > p) - (target < p)
        if direction == 0:
            self.segments = segments
            return target
        if self.bdst != 0 and direction != (1 if self.bdst > 0 else -1):
            # never beyond a soft limit: a move to the limit approaches less far
            via = min(max(target - self.bdst, min(lo, target)), max(hi, target))
            first = Segment(t_start, p, via, self.velocity, accel)
            segments.append(first)
            t_start += first.duration
            segments.append(Segment(t_start, via, target, self.bvel or self.velocity, accel))
        else:
            segments.append(Segment(t_start, p, target, self.velocity, accel))
        self.segments = segments
        return target

    def stop(self, t: float) -> float:
        """Decelerate to rest from time *t*; returns where the motor will stop."""
        p, v = self.state(t)
        if v == 0:
            self.segments = []
            return p
        seg = self._stop_segment(p, v, t)
        self.segments = [seg]
        return seg.end

    def set_position(self, position: float) -> None:
        """Redefine the dial position without moving (the motor is at rest)."""
        self.segments = []
        self.position = position

    # ------------------------------------------------------------------ internals
    def _stop_segment(self, p: float, v: float, t: float) -> Segment:
        accel = self.velocity / self.accel_s if self.accel_s > 0 else math.inf
        speed = abs(v)
        dist = 0.0 if math.isinf(accel) else speed ** 2 / (2 * accel)
        end = self.quantise(p + math.copysign(dist, v))
        # a slower ramp set mid-move (ACCL up, VELO down) must not carry the motor past
        # the limits of the move it is stopping
        lo, hi = self._bounds
        end = min(max(end, min(lo, p)), max(hi, p))
        return Segment(t, p, end, max(speed, 1e-12), accel, v0=speed)

    def _settle_backlash(self, direction: int) -> None:
        self.lost = -self.mechanical_backlash if direction < 0 else 0.0

    def _clip_travel(self, p: float, v: float, t: float) -> tuple[float, float]:
        if p >= self.travel_high and v > 0:
            self.hit_high = True
        elif p <= self.travel_low and v < 0:
            self.hit_low = True
        else:
            return p, v
        p = min(max(p, self.travel_low), self.travel_high)
        self.position = p
        self.last_direction = 1 if v > 0 else -1
        self._settle_backlash(self.last_direction)
        self.segments = []
        return p, 0.0
