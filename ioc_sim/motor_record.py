"""A motor record for every twin motor, faithful enough for ophyd and pyepics motors.

Each :class:`MotorRecord` serves the record ``{P}{element}:{axis}`` (the bare
name is the VAL field) with these fields:

=========  ===  =============================================================
Field      R/W  Meaning (units: the motor's EGU unless stated)
=========  ===  =============================================================
VAL        rw   user setpoint; put-with-completion returns when the move ends
DVAL       rw   dial setpoint
RBV        r    user readback, follows the motion (50 Hz while moving)
DRBV       r    dial readback
RLV        rw   relative move (VAL += RLV)
TWV        rw   tweak step; TWF / TWR (rw) tweak forward / reverse
OFF        rw   user offset: user = dial * (DIR ? -1 : 1) + OFF
DIR        rw   user direction, enum Pos / Neg
FOFF       rw   offset freeze switch, enum Variable / Frozen
SET        rw   enum Use / Set; in Set mode a VAL put redefines the position
DMOV       r    done moving (1 at rest)
MOVN       r    moving
TDIR       r    direction of travel (1 positive)
HLM, LLM   rw   user soft limits (derived from DHLM, DLLM, OFF, DIR)
DHLM,DLLM  rw   dial soft limits; both 0 means no soft limits (motor record rule)
LVIO       r    1 after a refused setpoint (outside the limits, or not finite)
HLS, LLS   r    hardware limit switches (travel ends 2 % of the range past the
                soft limits)
STOP       rw   1 stops the motor (decelerating at ACCL); resets to 0
SPMG       rw   enum Stop / Pause / Move / Go
VELO       rw   slew speed, EGU/s (> 0)
ACCL       rw   time to reach VELO, s (> 0)
BDST       rw   backlash distance (final approach in its sign's direction)
BVEL       rw   backlash speed, EGU/s (> 0)
RDBD       rw   retry deadband (>= 0)
MRES       r    motor step: setpoints are rounded to whole steps
EGU        r    engineering units (the twin's motor units)
PREC       r    display precision
DESC       rw   description
MSTA       r    status bits (DIRECTION, DONE, PLUS_LS, MINUS_LS, MOVING, HOMED)
DIFF       r    DVAL - DRBV
RRBV, RMP  r    raw readback, steps
HOMF, HOMR rw   home: move to the home switch, which sits at the design position
ATHM       r    at home
RTYP       r    "motor"
=========  ===  =============================================================

Behaviour, as the motor record's:

* A setpoint outside the soft limits sets LVIO = 1, leaves VAL at its old value
  and does not move; the put completes.
* Unlike the motor record, whose ``>``/``<`` checks let NaN through, a NaN or
  infinite setpoint is refused: LVIO = 1 and the put fails with a CA error.
* A new setpoint during a move makes the motor decelerate to rest and go on to
  the new target; every pending put-with-completion returns when it is done.
* No position is ever beyond the soft limits: the backlash approach of a move
  to a limit is clipped to it (:meth:`ioc_sim.motion.AxisMotion.move_to`).
* Read-only fields refuse writes with a CA error. Every writable configuration
  field is bounded, so no put can leave the record inconsistent; a put outside
  its bound fails with a CA error and one log line naming the value and the
  bound (see :data:`FIELD_BOUNDS_DOC`):

  - VELO, BVEL: finite, ``speed/1000 <= v <= VMAX`` (VMAX is 10x the description's
    speed);
  - ACCL: ``0.001 <= ACCL <= 60`` s;
  - BDST: ``|BDST| <= 10 %`` of the design range; RDBD, ``|TWV|``: within it;
  - OFF: ``|OFF| <= 1e6`` design ranges, so user and dial coordinates stay
    resolvable to one motor step;
  - HLM, LLM, DHLM, DLLM: finite, within the hardware travel, and the low
    limit never above the high one (the motor record accepts DLLM > DHLM and
    raises LVIO; here the put fails). DHLM = DLLM = 0 keeps the motor record's
    meaning, no soft limits, which the controllers refuse to drive.
"""

from __future__ import annotations

import asyncio
import math

from caproto import SkipWrite
from caproto.server import PVGroup, PvpropertyDouble, pvproperty

from ioc_sim.machine import SimulatedMachine
from ioc_sim.motion import AxisMotion
from ioc_sim.pvs import bounded, enum_pv, float_pv, int_pv, string_pv
from twin.description import MotorSpec

__all__ = ["MotorRecord", "MSTA_BITS", "FIELD_BOUNDS_DOC", "VMAX_FACTOR"]

#: VMAX, the highest VELO and BVEL a client may set, as a multiple of the
#: description's slew speed
VMAX_FACTOR = 10.0
#: the lowest VELO and BVEL, as a fraction of it: a speed of 1e-300 would leave a
#: move, and the DMOV a client waits on, unfinished for ever
VMIN_FACTOR = 1e-3
#: ACCL bounds, s
ACCL_RANGE_S = (1e-3, 60.0)
#: the largest |BDST|, as a fraction of the design range
BDST_FRACTION = 0.1
#: the largest |OFF|, in design ranges
OFF_RANGES = 1e6

FIELD_BOUNDS_DOC = {
    "VELO": "speed/1000 <= VELO <= VMAX", "BVEL": "speed/1000 <= BVEL <= VMAX",
    "ACCL": f"{ACCL_RANGE_S[0]} <= ACCL <= {ACCL_RANGE_S[1]} s",
    "BDST": f"|BDST| <= {BDST_FRACTION:g} x design range",
    "RDBD": "0 <= RDBD <= design range", "TWV": "|TWV| <= design range",
    "OFF": f"|OFF| <= {OFF_RANGES:g} x design range",
    "HLM/LLM/DHLM/DLLM": "within the hardware travel, low <= high",
}

#: motor record MSTA bit values used here
MSTA_BITS = {"DIRECTION": 1 << 0, "DONE": 1 << 1, "PLUS_LS": 1 << 2, "POSITION": 1 << 5,
             "HOME": 1 << 7, "MOVING": 1 << 10, "MINUS_LS": 1 << 13, "HOMED": 1 << 14}

_TICK_S = 0.02  # readback update period while moving


async def _let_monitors_out() -> None:
    """Let caproto's subscription tasks send the updates just posted.

    caproto sends monitor updates from queue tasks and a put-completion reply
    directly, so a reply could overtake the RBV, DMOV or LVIO updates of the
    same put. The motor record posts them first; yielding a few times to the
    event loop gives the same order.
    """
    for _ in range(_FLUSH_YIELDS):
        await asyncio.sleep(0)


_FLUSH_YIELDS = 4


def _precision(resolution: float) -> int:
    return max(0, -math.floor(math.log10(resolution))) + 1


class _Setpoint(PvpropertyDouble):
    """VAL: its control limits are published (ophyd checks them before it puts) but
    caproto does not enforce them, so an out-of-limit setpoint reaches the putter,
    which answers as the motor record does (LVIO = 1, no move)."""

    async def verify_value(self, value):  # noqa: D102
        if self.putter is not None:
            return await self.putter(self, value)
        return value


def _float(name: str, doc: str, *, read_only: bool = False) -> pvproperty:
    return float_pv(name, doc, 0.0, read_only=read_only)


class MotorRecord(PVGroup):
    """One simulated motor record; see the module docstring for its fields.

    Parameters
    ----------
    prefix : str
        The record name, ``{P}{element}:{axis}``.
    machine : SimulatedMachine
    motor : str
        The twin motor, ``element.axis``.
    """

    val = pvproperty(name=".VAL", value=0.0, dtype=_Setpoint, doc="user setpoint")
    dval = _float(".DVAL", "dial setpoint")
    rbv = _float(".RBV", "user readback", read_only=True)
    drbv = _float(".DRBV", "dial readback", read_only=True)
    rlv = _float(".RLV", "relative move")
    twv = _float(".TWV", "tweak step")
    twf = int_pv(".TWF", "tweak forward", read_only=False)
    twr = int_pv(".TWR", "tweak reverse", read_only=False)
    off = _float(".OFF", "user offset")
    dir = enum_pv(".DIR", "user direction", ("Pos", "Neg"), "Pos")
    foff = enum_pv(".FOFF", "offset freeze switch", ("Variable", "Frozen"), "Variable")
    set_use = enum_pv(".SET", "set/use switch", ("Use", "Set"), "Use")
    dmov = int_pv(".DMOV", "done moving", read_only=True, value=1)
    movn = int_pv(".MOVN", "moving", read_only=True)
    tdir = int_pv(".TDIR", "direction of travel", read_only=True, value=1)
    hlm = _float(".HLM", "user high limit")
    llm = _float(".LLM", "user low limit")
    dhlm = _float(".DHLM", "dial high limit")
    dllm = _float(".DLLM", "dial low limit")
    lvio = int_pv(".LVIO", "limit violation", read_only=True)
    hls = int_pv(".HLS", "at high limit switch", read_only=True)
    lls = int_pv(".LLS", "at low limit switch", read_only=True)
    stop = int_pv(".STOP", "stop", read_only=False)
    spmg = enum_pv(".SPMG", "stop/pause/move/go", ("Stop", "Pause", "Move", "Go"), "Go")
    velo = _float(".VELO", "velocity, EGU/s")
    accl = _float(".ACCL", "seconds to velocity")
    bdst = _float(".BDST", "backlash distance")
    bvel = _float(".BVEL", "backlash velocity, EGU/s")
    rdbd = _float(".RDBD", "retry deadband")
    vbas = _float(".VBAS", "base velocity", read_only=True)
    vmax = _float(".VMAX", "max velocity (0: none)", read_only=True)
    mres = _float(".MRES", "motor step size", read_only=True)
    egu = string_pv(".EGU", "engineering units")
    prec = int_pv(".PREC", "display precision", read_only=True)
    desc = string_pv(".DESC", "description", read_only=False)
    msta = int_pv(".MSTA", "motor status", read_only=True)
    diff = _float(".DIFF", "DVAL - DRBV", read_only=True)
    rrbv = int_pv(".RRBV", "raw readback, steps", read_only=True)
    rmp = int_pv(".RMP", "raw motor position, steps", read_only=True)
    miss = int_pv(".MISS", "ran out of retries", read_only=True)
    homf = int_pv(".HOMF", "home forward", read_only=False)
    homr = int_pv(".HOMR", "home reverse", read_only=False)
    athm = int_pv(".ATHM", "at home", read_only=True)
    cnen = int_pv(".CNEN", "enable control", value=1, read_only=False)
    rtyp = string_pv(".RTYP", "record type", "motor")
    stat = int_pv(".STAT", "alarm status", read_only=True)
    sevr = int_pv(".SEVR", "alarm severity", read_only=True)

    def __init__(self, prefix: str, *, machine: SimulatedMachine, motor: str) -> None:
        super().__init__(prefix=prefix)
        self.machine = machine
        self.motor = motor
        self.spec: MotorSpec = machine.desc.motors[motor]
        self.axis: AxisMotion = machine.axes[motor]
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: asyncio.Task[None] | None = None
        self._move_bounds: tuple[float, float] | None = None
        self._excursion_counted = False

    # ------------------------------------------------------------------ set-up
    async def initialise(self) -> None:
        """Publish the motor's configuration; call once before serving."""
        s, a = self.spec, self.axis
        prec = _precision(s.resolution)
        for prop in self._float_props():
            await prop.write_metadata(units=s.units, precision=prec)
        await self.egu.write(s.units[:39], verify_value=False)
        await self.prec.write(prec, verify_value=False)
        await self.desc.write((s.description or self.motor)[:39], verify_value=False)
        await self.mres.write(s.resolution, verify_value=False)
        await self.vmax.write(VMAX_FACTOR * s.speed, verify_value=False)
        await self.velo.write(a.velocity, verify_value=False)
        await self.accl.write(a.accel_s, verify_value=False)
        await self.bdst.write(a.bdst, verify_value=False)
        await self.bvel.write(a.bvel, verify_value=False)
        await self.rdbd.write(s.resolution, verify_value=False)
        await self.twv.write(10 * s.resolution, verify_value=False)
        await self.dhlm.write(s.high, verify_value=False)
        await self.dllm.write(s.low, verify_value=False)
        await self._publish_limits()
        p = a.position
        await self.val.write(p, verify_value=False)
        await self.dval.write(p, verify_value=False)
        await self._publish_position(p, 0.0)
        await self._publish_status(moving=False)

    def _float_props(self):
        return (self.val, self.dval, self.rbv, self.drbv, self.rlv, self.twv, self.off,
                self.hlm, self.llm, self.dhlm, self.dllm, self.bdst, self.rdbd, self.mres,
                self.diff)

    # ------------------------------------------------------------------ coordinates
    @property
    def _sign(self) -> int:
        return -1 if self.dir.value == "Neg" else 1

    def _user(self, dial: float) -> float:
        return self._sign * dial + self.off.value

    def _dial(self, user: float) -> float:
        return (user - self.off.value) * self._sign

    def _user_limits(self) -> tuple[float, float]:
        lo, hi = self._sign * self.dllm.value, self._sign * self.dhlm.value
        lo, hi = min(lo, hi), max(lo, hi)
        return lo + self.off.value, hi + self.off.value

    def _dial_bounds(self) -> tuple[float, float] | None:
        """Dial soft limits (low, high); None where DLLM = DHLM = 0 (none)."""
        lo, hi = self.dllm.value, self.dhlm.value
        return None if lo == 0 and hi == 0 else (lo, hi)

    @property
    def _range(self) -> float:
        """The design range of the axis, EGU."""
        return self.spec.high - self.spec.low

    def _bad_field(self, field: str, value: object, allowed: str) -> ValueError:
        """The error of a configuration put refused (the IOC logs it on one line)."""
        return ValueError(f"{self.prefix}.{field}: {value!r} refused; allowed: {allowed}")

    def _within(self, dial: float) -> bool:
        lo, hi = self.dllm.value, self.dhlm.value
        if lo == 0 and hi == 0:
            return True  # motor record: no soft limits
        return lo <= dial <= hi

    async def _publish_limits(self) -> None:
        lo, hi = self._user_limits()
        await self.llm.write(lo, verify_value=False)
        await self.hlm.write(hi, verify_value=False)
        if self.dllm.value == 0 and self.dhlm.value == 0:
            lo = hi = 0.0
        # control limits on VAL: ophyd's EpicsMotor checks them before it puts
        await self.val.write_metadata(lower_ctrl_limit=lo, upper_ctrl_limit=hi)
        await self.rbv.write_metadata(lower_ctrl_limit=lo, upper_ctrl_limit=hi)

    async def _publish_position(self, dial: float, velocity: float) -> None:
        a = self.axis
        await self.drbv.write(dial, verify_value=False)
        await self.rbv.write(self._user(dial), verify_value=False)
        steps = int(round(dial / a.resolution))
        await self.rrbv.write(steps, verify_value=False)
        await self.rmp.write(steps, verify_value=False)
        await self.diff.write(self.dval.value - dial, verify_value=False)
        await self.athm.write(int(abs(dial - self.spec.position) < a.resolution / 2),
                              verify_value=False)
        if velocity:
            await self.tdir.write(int(velocity > 0), verify_value=False)

    async def _publish_status(self, *, moving: bool) -> None:
        a = self.axis
        bits = MSTA_BITS["POSITION"] | MSTA_BITS["HOMED"]
        if self.tdir.value:
            bits |= MSTA_BITS["DIRECTION"]
        if not moving:
            bits |= MSTA_BITS["DONE"]
        else:
            bits |= MSTA_BITS["MOVING"]
        if a.hit_high:
            bits |= MSTA_BITS["PLUS_LS"]
        if a.hit_low:
            bits |= MSTA_BITS["MINUS_LS"]
        if self.athm.value:
            bits |= MSTA_BITS["HOME"]
        await self.hls.write(int(a.hit_high), verify_value=False)
        await self.lls.write(int(a.hit_low), verify_value=False)
        await self.movn.write(int(moving), verify_value=False)
        await self.msta.write(bits, verify_value=False)

    # ------------------------------------------------------------------ motion
    async def _start(self, dial_target: float) -> float:
        """Start a move to *dial_target* (already checked); returns the quantised target."""
        now = self.machine.now()
        here, _ = self.axis.state(now)
        bounds = self._dial_bounds()
        # a motor that limits changed under may move back towards them: only a position
        # beyond both the limits and where the move started is an excursion
        self._move_bounds = None if bounds is None else (min(bounds[0], here),
                                                         max(bounds[1], here))
        self._excursion_counted = False
        target = self.axis.move_to(dial_target, now, bounds=self._move_bounds)
        await self.dval.write(target, verify_value=False)
        await self.dmov.write(0, verify_value=False)
        await self._publish_status(moving=True)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run_motion())
        return target

    async def _run_motion(self) -> None:
        """Follow the motion, publishing readbacks, until the motor is at rest."""
        try:
            while True:
                now = self.machine.now()
                p, v = self.axis.state(now)
                moving = bool(self.axis.segments)
                self._check_excursion(p)
                await self._publish_position(p, v)
                if not moving:
                    break
                remaining = self.axis.end_time() - now
                await asyncio.sleep(min(_TICK_S, max(remaining, 0.0)))
        finally:
            p, _ = self.axis.state(self.machine.now())
            await self._publish_position(p, 0.0)
            if self.axis.hit_high or self.axis.hit_low:
                # stopped on a limit switch: the setpoint follows the readback
                await self.dval.write(p, verify_value=False)
                await self.val.write(self._user(p), verify_value=False)
            await self._publish_status(moving=False)
            await self.dmov.write(1, verify_value=False)
            await _let_monitors_out()
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _check_excursion(self, dial: float) -> None:
        """Count a move that reached beyond the soft limits it started under."""
        b = self._move_bounds
        if b is None or self._excursion_counted:
            return
        half = self.axis.resolution / 2
        if not b[0] - half <= dial <= b[1] + half:
            self._excursion_counted = True
            self.machine.limit_excursions += 1
            self.log.error("%s: dial %r beyond the soft limits [%r, %r] of its move",
                           self.prefix, dial, *b)

    async def _wait_done(self) -> None:
        if self._runner is None or self._runner.done():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    async def _pulse_done(self) -> None:
        """A null move: DMOV goes 0 then 1, as the motor record does."""
        await self.dmov.write(0, verify_value=False)
        if self._runner is None or self._runner.done():
            await self.dmov.write(1, verify_value=False)
            await _let_monitors_out()

    async def _refuse(self, value: object, why: str) -> None:
        self.machine.refused_setpoints += 1
        await self.lvio.write(1, verify_value=False)
        await _let_monitors_out()
        raise ValueError(f"{self.prefix}: setpoint {value!r} refused: {why}")

    async def _request(self, user_target: float) -> float:
        """Validate and execute a user-coordinate setpoint; returns the VAL to keep."""
        self.machine.motion_puts += 1
        if not math.isfinite(user_target):
            await self._refuse(user_target, "not a finite number")
        if self.set_use.value == "Set":
            await self._redefine(user_target)
            return user_target
        dial = self._dial(user_target)
        if not (self._within(dial) and self._within(self.axis.quantise(dial))):
            lo, hi = self._user_limits()
            self.machine.refused_setpoints += 1
            await self.lvio.write(1, verify_value=False)
            await _let_monitors_out()
            self.log.warning("%s: %r outside soft limits [%r, %r]; not moving",
                             self.prefix, user_target, lo, hi)
            raise SkipWrite()  # VAL keeps its old value, no motion, the put completes
        if self.lvio.value != 0:
            await self.lvio.write(0, verify_value=False)
        if self.cnen.value == 0 or self.spmg.value in ("Stop", "Pause"):
            await self.dval.write(self.axis.quantise(dial), verify_value=False)
            return self._user(self.axis.quantise(dial))
        here, _ = self.axis.state(self.machine.now())
        target = self.axis.quantise(dial)
        if self.val.value != self._user(target):
            await self.val.write(self._user(target), verify_value=False)
        if target == here and not self.axis.segments:
            if self.dval.value != target:
                await self.dval.write(target, verify_value=False)
            await self._pulse_done()
        else:
            await self._start(target)
            await self._wait_done()
        if self.spmg.value == "Move":
            await self.spmg.write("Pause", verify_value=False)
        return self.val.value

    async def _redefine(self, user_target: float) -> None:
        """SET mode: make the current position read *user_target* without moving."""
        here, _ = self.axis.state(self.machine.now())
        if self.foff.value == "Variable":
            await self.off.write(user_target - self._sign * here, verify_value=False)
            await self._publish_limits()
        else:
            dial = self._dial(user_target)
            shift = dial - here
            self.axis.set_position(dial)
            await self.dhlm.write(self.dhlm.value + shift, verify_value=False)
            await self.dllm.write(self.dllm.value + shift, verify_value=False)
            here = dial
        await self.dval.write(here, verify_value=False)
        await self._publish_position(here, 0.0)

    # ------------------------------------------------------------------ putters
    @val.putter
    async def val(self, instance, value):
        return await self._request(float(value))

    @dval.putter
    async def dval(self, instance, value):
        user = self._user(float(value))
        if not math.isfinite(user):
            await self._refuse(value, "not a finite number")
        new = await self._request(user)
        await self.val.write(new, verify_value=False)
        return self._dial(new)

    @rlv.putter
    async def rlv(self, instance, value):
        await self._relative(float(value))
        return 0.0

    @twf.putter
    async def twf(self, instance, value):
        if value:
            await self._relative(self.twv.value)
        return 0

    @twr.putter
    async def twr(self, instance, value):
        if value:
            await self._relative(-self.twv.value)
        return 0

    async def _relative(self, delta: float) -> None:
        if not math.isfinite(delta):
            await self._refuse(delta, "not a finite number")
        new = await self._request(self.val.value + delta)
        await self.val.write(new, verify_value=False)

    @homf.putter
    async def homf(self, instance, value):
        if value:
            await self._home()
        return 0

    @homr.putter
    async def homr(self, instance, value):
        if value:
            await self._home()
        return 0

    async def _home(self) -> None:
        new = await self._request(self._user(self.spec.position))
        await self.val.write(new, verify_value=False)

    @stop.putter
    async def stop(self, instance, value):
        self.machine.motion_puts += 1
        if value:
            await self._halt()
        return 0

    async def _halt(self) -> None:
        end = self.axis.stop(self.machine.now())
        await self.dval.write(end, verify_value=False)
        await self.val.write(self._user(end), verify_value=False)

    @spmg.putter
    async def spmg(self, instance, value):
        self.machine.motion_puts += 1
        if value in ("Stop", "Pause"):
            end = self.axis.stop(self.machine.now())
            if value == "Stop":
                await self.dval.write(end, verify_value=False)
                await self.val.write(self._user(end), verify_value=False)
            return value
        # Move or Go: resume towards DVAL if the motor is not there, and only if DVAL is
        # still within the soft limits (they may have changed while it was stopped; the
        # campaign found motors resuming to a setpoint beyond its new limits)
        here, _ = self.axis.state(self.machine.now())
        if self.dval.value != here and not self.axis.segments:
            if not self._within(self.dval.value):
                self.log.warning("%s: SPMG %s does not resume to DVAL %r, now outside the "
                                 "soft limits", self.prefix, value, self.dval.value)
                await self.lvio.write(1, verify_value=False)
                await self.dval.write(here, verify_value=False)
                await self.val.write(self._user(here), verify_value=False)
                return value
            await self.spmg.write(value, verify_value=False)
            await self._start(self.dval.value)
        return value

    @off.putter
    async def off(self, instance, value):
        most = OFF_RANGES * self._range
        value = self._bounded("OFF", value, -most, most)
        await self._recompute_user(offset=value)
        return value

    @dir.putter
    async def dir(self, instance, value):
        await self._recompute_user(sign=-1 if value == "Neg" else 1)
        return value

    async def _recompute_user(self, *, offset: float | None = None,
                              sign: int | None = None) -> None:
        off = self.off.value if offset is None else offset
        sg = self._sign if sign is None else sign
        here, _ = self.axis.state(self.machine.now())
        lo, hi = sg * self.dllm.value + off, sg * self.dhlm.value + off
        await self.llm.write(min(lo, hi), verify_value=False)
        await self.hlm.write(max(lo, hi), verify_value=False)
        await self.val.write(sg * self.dval.value + off, verify_value=False)
        await self.rbv.write(sg * here + off, verify_value=False)

    @hlm.putter
    async def hlm(self, instance, value):
        await self._user_limit(float(value), high=True)
        raise SkipWrite()

    @llm.putter
    async def llm(self, instance, value):
        await self._user_limit(float(value), high=False)
        raise SkipWrite()

    async def _user_limit(self, value: float, *, high: bool) -> None:
        field = "HLM" if high else "LLM"
        if not math.isfinite(value):
            raise self._bad_field(field, value, "a finite number")
        dial = self._dial(value)
        # with DIR = Neg the user high limit is the dial low limit
        dial_high = high == (self._sign > 0)
        self._check_dial_limit(field, value, dial, high=dial_high)
        await (self.dhlm if dial_high else self.dllm).write(dial, verify_value=False)
        await self._publish_limits()

    def _check_dial_limit(self, field: str, value: float, dial: float, *, high: bool) -> None:
        """Refuse a dial limit outside the hardware travel, or one that crosses
        the other limit."""
        a = self.axis
        if not a.travel_low <= dial <= a.travel_high:
            raise self._bad_field(field, value, f"a dial limit within the hardware travel "
                                  f"[{a.travel_low:.6g}, {a.travel_high:.6g}]")
        lo, hi = (self.dllm.value, dial) if high else (dial, self.dhlm.value)
        if lo > hi and not (lo == 0 and hi == 0):
            other = "DLLM" if high else "DHLM"
            raise self._bad_field(field, value, f"a dial limit {'>=' if high else '<='} "
                                  f"{other} = {(lo if high else hi):.6g}")

    @dhlm.putter
    async def dhlm(self, instance, value):
        return await self._dial_limit(instance, float(value), high=True)

    @dllm.putter
    async def dllm(self, instance, value):
        return await self._dial_limit(instance, float(value), high=False)

    async def _dial_limit(self, instance, value: float, *, high: bool) -> float:
        field = "DHLM" if high else "DLLM"
        if not math.isfinite(value):
            raise self._bad_field(field, value, "a finite number")
        self._check_dial_limit(field, value, value, high=high)
        await instance.write(value, verify_value=False)
        await self._publish_limits()
        return value

    @velo.putter
    async def velo(self, instance, value):
        self.axis.velocity = self._speed("VELO", value)
        return self.axis.velocity

    @accl.putter
    async def accl(self, instance, value):
        self.axis.accel_s = self._bounded("ACCL", value, *ACCL_RANGE_S, "s")
        return self.axis.accel_s

    @bvel.putter
    async def bvel(self, instance, value):
        self.axis.bvel = self._speed("BVEL", value)
        return self.axis.bvel

    @bdst.putter
    async def bdst(self, instance, value):
        most = BDST_FRACTION * self._range
        self.axis.bdst = self._bounded("BDST", value, -most, most)
        return self.axis.bdst

    @rdbd.putter
    async def rdbd(self, instance, value):
        return self._bounded("RDBD", value, 0.0, self._range)

    @twv.putter
    async def twv(self, instance, value):
        return self._bounded("TWV", value, -self._range, self._range)

    def _speed(self, field: str, value: float) -> float:
        return self._bounded(field, value, VMIN_FACTOR * self.spec.speed, self.vmax.value,
                             f"{self.spec.units}/s")

    def _bounded(self, field: str, value: object, lo: float, hi: float,
                 unit: str | None = None) -> float:
        """*value* as a float within [lo, hi] (*unit*: the motor's by default), else a
        ValueError naming both."""
        return bounded(f"{self.prefix}.{field}", value, lo, hi,
                       self.spec.units if unit is None else unit)
