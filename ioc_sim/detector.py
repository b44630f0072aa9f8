"""The area detector IOC: acquisition, triggering, images and online analysis.

:class:`AreaDetector` serves ``{P}det:`` with areaDetector's names where they exist.
Each frame is traced by the twin at the motors' positions at the start of the
exposure, with photon (Poisson) noise for that exposure and the ring current
at that instant, and readout noise. Frames are photon counts (float32, row 0 at
the top, as a camera shows them).

PVs (``r`` read-only, ``rw`` writable)
--------------------------------------
cam1 (the driver)
    ``cam1:Acquire`` (rw, Done/Acquire; a put-with-completion returns when a
    Single or Multiple acquisition ends, or when a Continuous one is stopped),
    ``cam1:Acquire_RBV`` (r), ``cam1:AcquireTime`` (rw, s, > 0),
    ``cam1:AcquirePeriod`` (rw, s, >= 0; frames start at least this far apart),
    ``cam1:NumImages`` (rw, >= 1), ``cam1:NumImagesCounter_RBV`` (r),
    ``cam1:ImageMode`` (rw, Single/Multiple/Continuous),
    ``cam1:TriggerMode`` (rw, Internal/External),
    ``cam1:Trigger`` (rw; in External mode each put of 1 starts one exposure),
    ``cam1:DetectorState_RBV`` (r, areaDetector's states: Idle, Acquire,
    Readout, ..., Waiting), ``cam1:ArrayCounter`` (rw, reset the counter),
    ``cam1:ArrayCounter_RBV`` (r), ``cam1:ArraySizeX_RBV``, ``cam1:ArraySizeY_RBV`` (r),
    ``cam1:PixelSizeX_RBV``, ``cam1:PixelSizeY_RBV`` (r, um),
    ``cam1:Model_RBV`` (r), ``cam1:StatusMessage_RBV`` (r).
image1 (NDStdArrays)
    ``image1:ArrayData`` (r, float32 counts, ArraySize0 x ArraySize1 values, row-major),
    ``image1:ArraySize0_RBV``, ``image1:ArraySize1_RBV`` (r),
    ``image1:UniqueId_RBV`` (r, frame number of the published array).
Stats1 (NDStats, on the whole frame or on ROI1 when it is enabled; pixels)
    ``Stats1:Total_RBV``, ``Stats1:MaxValue_RBV``, ``Stats1:MinValue_RBV`` (counts),
    ``Stats1:CentroidX_RBV``, ``Stats1:CentroidY_RBV``, ``Stats1:SigmaX_RBV``,
    ``Stats1:SigmaY_RBV``, ``Stats1:FWHMX_RBV``, ``Stats1:FWHMY_RBV`` (pixels),
    ``Stats1:UniqueId_RBV`` (r), ``Stats1:ExecutionTime_RBV`` (r, ms).
ROI1 (NDROI)
    ``ROI1:EnableCallbacks`` (rw, Disable/Enable), ``ROI1:MinX``, ``ROI1:MinY``,
    ``ROI1:SizeX``, ``ROI1:SizeY`` (rw, pixels; size 0 = to the frame's edge).
Trig1 (event trigger on the analysis)
    ``Trig1:Enable`` (rw, Disable/Enable), ``Trig1:Condition`` (rw,
    CentroidShift/IntensityDrop/IntensityAbove/WidthChange, see
    :class:`~ioc_sim.analysis.TriggerCondition`), ``Trig1:Threshold`` (rw),
    ``Trig1:Mode`` (rw, Mark: publish every frame and flag the ones that fire;
    Keep: publish to image1 only the frames that fire), ``Trig1:ResetReference``
    (rw; the next frame becomes the reference), ``Trig1:Fired_RBV`` (r, the
    last frame fired), ``Trig1:FiredCount_RBV`` (r), ``Trig1:LastFiredId_RBV`` (r).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
from caproto import SkipWrite
from caproto.server import PVGroup

from ioc_sim.analysis import (
    TRIGGER_LABELS,
    EventTrigger,
    FrameStats,
    Roi,
    counts_frame,
    frame_stats,
)
from ioc_sim.machine import SimulatedMachine
from ioc_sim.pvs import array_pv, bounded, enum_pv, float_pv, int_pv, string_pv
from twin.description import Detector
from twin.errors import ConfigError
from twin.observation import Observation

__all__ = ["AreaDetector", "make_area_detector", "detector_frame", "DETECTOR_STATES"]

#: areaDetector's DetectorState_RBV strings, in order
DETECTOR_STATES = ("Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error",
                   "Waiting", "Initializing", "Disconnected", "Aborted")


def detector_frame(obs: Observation, exposure_s: float) -> np.ndarray:
    """The detector's frame in photon counts (whole numbers, float32), row 0 at the top.

    The twin's image is photons/s per pixel with row 0 at the bottom; a frame
    holds the counts of one exposure, as a camera delivers them.
    """
    image = obs.detector.image
    if image is None:  # pragma: no cover - a Detector always images
        raise ConfigError("the detector reading has no image")
    return counts_frame(image, exposure_s)


class AreaDetector(PVGroup):
    """The simulated area detector ``{P}det:`` (see the module docstring for its PVs).

    Build it with :func:`make_area_detector`, which sizes ``image1:ArrayData``
    for the beamline's detector.

    Parameters
    ----------
    prefix : str
        ``{P}det:``.
    machine : SimulatedMachine
    on_observation : callable, optional
        Called with every frame's :class:`~twin.observation.Observation` (the IOC
        updates its diagnostics from it); may be a coroutine function.
    """

    acquire = enum_pv("cam1:Acquire", "start/stop acquisition", ("Done", "Acquire"), "Done")
    acquire_rbv = enum_pv("cam1:Acquire_RBV", "acquiring", ("Done", "Acquire"), "Done",
                        read_only=True)
    acquire_time = float_pv("cam1:AcquireTime", "exposure time", 0.1, read_only=False, units="s",
                          precision=4)
    acquire_time_rbv = float_pv("cam1:AcquireTime_RBV", "exposure time", 0.1, units="s",
                              precision=4)
    acquire_period = float_pv("cam1:AcquirePeriod", "time between frame starts", 0.0,
                            read_only=False, units="s", precision=4)
    acquire_period_rbv = float_pv("cam1:AcquirePeriod_RBV", "time between frame starts", 0.0,
                                units="s", precision=4)
    num_images = int_pv("cam1:NumImages", "frames in Multiple mode", 1, read_only=False)
    num_images_rbv = int_pv("cam1:NumImages_RBV", "frames in Multiple mode", 1)
    num_images_counter = int_pv("cam1:NumImagesCounter_RBV", "frames in this acquisition")
    image_mode = enum_pv("cam1:ImageMode", "image mode", ("Single", "Multiple", "Continuous"),
                       "Single")
    image_mode_rbv = enum_pv("cam1:ImageMode_RBV", "image mode",
                           ("Single", "Multiple", "Continuous"), "Single", read_only=True)
    trigger_mode = enum_pv("cam1:TriggerMode", "trigger mode", ("Internal", "External"),
                         "Internal")
    trigger_mode_rbv = enum_pv("cam1:TriggerMode_RBV", "trigger mode", ("Internal", "External"),
                             "Internal", read_only=True)
    trigger = int_pv("cam1:Trigger", "external trigger: 1 starts one exposure", read_only=False)
    detector_state = enum_pv("cam1:DetectorState_RBV", "detector state", DETECTOR_STATES, "Idle",
                           read_only=True)
    array_counter = int_pv("cam1:ArrayCounter", "frame counter (write to reset)", read_only=False)
    array_counter_rbv = int_pv("cam1:ArrayCounter_RBV", "frames taken")
    size_x = int_pv("cam1:ArraySizeX_RBV", "frame width, pixels")
    size_y = int_pv("cam1:ArraySizeY_RBV", "frame height, pixels")
    pixel_x = float_pv("cam1:PixelSizeX_RBV", "pixel pitch", units="um")
    pixel_y = float_pv("cam1:PixelSizeY_RBV", "pixel pitch", units="um")
    model = string_pv("cam1:Model_RBV", "model", "beamtwin simulated detector")
    status_msg = string_pv("cam1:StatusMessage_RBV", "status message", "Idle")

    array_size0 = int_pv("image1:ArraySize0_RBV", "array width, pixels")
    array_size1 = int_pv("image1:ArraySize1_RBV", "array height, pixels")
    image_uid = int_pv("image1:UniqueId_RBV", "frame number of the published array")

    total = float_pv("Stats1:Total_RBV", "sum of counts", precision=0)
    max_value = float_pv("Stats1:MaxValue_RBV", "brightest pixel, counts", precision=0)
    min_value = float_pv("Stats1:MinValue_RBV", "dimmest pixel, counts", precision=0)
    centroid_x = float_pv("Stats1:CentroidX_RBV", "centroid x", units="px")
    centroid_y = float_pv("Stats1:CentroidY_RBV", "centroid y", units="px")
    sigma_x = float_pv("Stats1:SigmaX_RBV", "rms width x", units="px")
    sigma_y = float_pv("Stats1:SigmaY_RBV", "rms width y", units="px")
    fwhm_x = float_pv("Stats1:FWHMX_RBV", "FWHM x", units="px")
    fwhm_y = float_pv("Stats1:FWHMY_RBV", "FWHM y", units="px")
    stats_uid = int_pv("Stats1:UniqueId_RBV", "frame number of these statistics")
    stats_time = float_pv("Stats1:ExecutionTime_RBV", "analysis time of the last frame",
                        units="ms")

    roi_enable = enum_pv("ROI1:EnableCallbacks", "analyse the ROI only", ("Disable", "Enable"),
                       "Disable")
    roi_min_x = int_pv("ROI1:MinX", "ROI first column", read_only=False)
    roi_min_y = int_pv("ROI1:MinY", "ROI first row", read_only=False)
    roi_size_x = int_pv("ROI1:SizeX", "ROI width (1 to the frame width)", read_only=False)
    roi_size_y = int_pv("ROI1:SizeY", "ROI height (1 to the frame height)", read_only=False)

    trig_enable = enum_pv("Trig1:Enable", "event trigger on/off", ("Disable", "Enable"),
                        "Disable")
    trig_condition = enum_pv("Trig1:Condition", "what makes a frame matter", TRIGGER_LABELS,
                           TRIGGER_LABELS[0])
    trig_threshold = float_pv("Trig1:Threshold", "threshold, in the condition's units", 5.0,
                            read_only=False)
    trig_mode = enum_pv("Trig1:Mode", "Mark every frame, or Keep only frames that fire",
                      ("Mark", "Keep"), "Mark")
    trig_reset = int_pv("Trig1:ResetReference", "1: the next frame becomes the reference",
                      read_only=False)
    trig_fired = int_pv("Trig1:Fired_RBV", "the last frame fired")
    trig_count = int_pv("Trig1:FiredCount_RBV", "frames that fired")
    trig_last = int_pv("Trig1:LastFiredId_RBV", "frame number of the last frame that fired")



    def __init__(self, prefix: str, *, machine: SimulatedMachine,
                 on_observation: Callable[[Observation], object] | None = None) -> None:
        super().__init__(prefix=prefix)
        det: Detector = machine.desc.detector
        self.machine = machine
        self.nx, self.ny = det.pixels
        self._on_observation = on_observation
        self.trigger = EventTrigger()
        self._task: asyncio.Task[None] | None = None
        self._external = asyncio.Event()
        self._frame_id = 0
        self.busy = False


    # ------------------------------------------------------------------ putters
    @acquire.putter
    async def acquire(self, instance, value):
        if value == "Acquire":
            await self.start()
            await instance.write("Acquire", verify_value=False)
            await self.wait()
            raise SkipWrite()  # the loop has already set Acquire back to Done
        await self.abort()
        return "Done"

    @trigger.putter
    async def trigger(self, instance, value):
        if value:
            self._external.set()
        return 0

    @acquire_time.putter
    async def acquire_time(self, instance, value):
        value = bounded("cam1:AcquireTime", value, *ACQUIRE_TIME_S, "s")
        await self.acquire_time_rbv.write(value, verify_value=False)
        return value

    @acquire_period.putter
    async def acquire_period(self, instance, value):
        value = bounded("cam1:AcquirePeriod", value, 0.0, ACQUIRE_TIME_S[1], "s")
        await self.acquire_period_rbv.write(value, verify_value=False)
        return value

    @num_images.putter
    async def num_images(self, instance, value):
        value = int(bounded("cam1:NumImages", value, 1, MAX_IMAGES, "frames"))
        await self.num_images_rbv.write(value, verify_value=False)
        return value

    @image_mode.putter
    async def image_mode(self, instance, value):
        await self.image_mode_rbv.write(value, verify_value=False)
        return value

    @trigger_mode.putter
    async def trigger_mode(self, instance, value):
        await self.trigger_mode_rbv.write(value, verify_value=False)
        return value

    @array_counter.putter
    async def array_counter(self, instance, value):
        value = int(bounded("cam1:ArrayCounter", value, 0, 2 ** 31 - 1, "frames"))
        await self.array_counter_rbv.write(value, verify_value=False)
        return value

    @roi_min_x.putter
    async def roi_min_x(self, instance, value):
        return int(bounded("ROI1:MinX", value, 0, self.nx - 1, "pixels"))

    @roi_min_y.putter
    async def roi_min_y(self, instance, value):
        return int(bounded("ROI1:MinY", value, 0, self.ny - 1, "pixels"))

    @roi_size_x.putter
    async def roi_size_x(self, instance, value):
        return int(bounded("ROI1:SizeX", value, 1, self.nx, "pixels"))

    @roi_size_y.putter
    async def roi_size_y(self, instance, value):
        return int(bounded("ROI1:SizeY", value, 1, self.ny, "pixels"))

    @trig_enable.putter
    async def trig_enable(self, instance, value):
        if value == "Enable" and instance.value != "Enable":
            self.trigger.reset_reference()
        return value

    @trig_condition.putter
    async def trig_condition(self, instance, value):
        self._configure_trigger(TRIGGER_LABELS.index(value), self.trig_threshold.value)
        return value

    @trig_threshold.putter
    async def trig_threshold(self, instance, value):
        cond = TRIGGER_LABELS.index(self.trig_condition.value)
        self._configure_trigger(cond, float(value))
        return value

    def _configure_trigger(self, condition: int, threshold: float) -> None:
        try:
            self.trigger.configure(condition, threshold)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        self.trigger.reset_reference()

    @trig_reset.putter
    async def trig_reset(self, instance, value):
        if value:
            self.trigger.reset_reference()
        return 0

    async def initialise(self) -> None:
        """Publish sizes and defaults; call once before serving."""
        det = self.machine.desc.detector
        p = self
        for prop, value in ((p.size_x, self.nx), (p.size_y, self.ny), (p.array_size0, self.nx),
                            (p.array_size1, self.ny), (p.pixel_x, det.pixel_um),
                            (p.pixel_y, det.pixel_um), (p.acquire_time, det.exposure_s),
                            (p.acquire_time_rbv, det.exposure_s), (p.roi_size_x, self.nx),
                            (p.roi_size_y, self.ny)):
            await prop.write(value, verify_value=False)

    # ------------------------------------------------------------------ acquisition
    async def start(self) -> None:
        """Start an acquisition in the current mode (no-op if one is running)."""
        if self._task is not None and not self._task.done():
            return
        self._external.clear()
        await self.num_images_counter.write(0, verify_value=False)
        await self.acquire_rbv.write("Acquire", verify_value=False)
        self._task = asyncio.get_running_loop().create_task(self._acquire_loop())

    async def wait(self) -> None:
        """Until the running acquisition ends."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def abort(self) -> None:
        """Stop acquiring; the frame being exposed is dropped."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _acquire_loop(self) -> None:
        p = self
        mode = p.image_mode.value
        wanted = 1 if mode == "Single" else (p.num_images.value if mode == "Multiple" else None)
        taken = 0
        try:
            self.busy = True
            while wanted is None or taken < wanted:
                if p.trigger_mode.value == "External":
                    await p.detector_state.write("Waiting", verify_value=False)
                    await p.status_msg.write("Waiting for trigger", verify_value=False)
                    await self._external.wait()
                    self._external.clear()
                t_start = time.monotonic()
                await self.acquire_frame()
                taken += 1
                await p.num_images_counter.write(taken, verify_value=False)
                if p.trigger_mode.value == "Internal":
                    rest = p.acquire_period.value - (time.monotonic() - t_start)
                    if rest > 0 and (wanted is None or taken < wanted):
                        await asyncio.sleep(rest)
        except asyncio.CancelledError:
            await p.detector_state.write("Aborted", verify_value=False)
            await p.status_msg.write("Aborted", verify_value=False)
            raise
        except Exception as exc:  # a failed trace must not leave the detector "acquiring"
            await p.detector_state.write("Error", verify_value=False)
            await p.status_msg.write(str(exc)[:39], verify_value=False)
            self.log.exception("acquisition failed")
        else:
            await p.detector_state.write("Idle", verify_value=False)
            await p.status_msg.write("Idle", verify_value=False)
        finally:
            self.busy = False
            await p.acquire_rbv.write("Done", verify_value=False)
            await p.acquire.write("Done", verify_value=False)

    async def acquire_frame(self) -> np.ndarray:
        """Expose, read out, analyse and publish one frame; returns it (counts)."""
        p = self
        exposure = float(p.acquire_time.value)
        await p.detector_state.write("Acquire", verify_value=False)
        await p.status_msg.write("Acquiring", verify_value=False)
        snap = self.machine.snapshot()
        trace = asyncio.to_thread(self.machine.observe, snap, exposure)
        obs, _ = await asyncio.gather(trace, asyncio.sleep(exposure))
        await p.detector_state.write("Readout", verify_value=False)
        frame = detector_frame(obs, exposure)
        self._frame_id += 1
        uid = self._frame_id
        await p.array_counter.write(p.array_counter.value + 1, verify_value=False)
        await p.array_counter_rbv.write(p.array_counter.value, verify_value=False)
        stats, ms = self.analyse(frame)
        fired = False
        if p.trig_enable.value == "Enable":
            fired = self.trigger.evaluate(stats)
            await p.trig_fired.write(int(fired), verify_value=False)
            if fired:
                await p.trig_count.write(p.trig_count.value + 1, verify_value=False)
                await p.trig_last.write(uid, verify_value=False)
        await self._publish_stats(stats, uid, ms)
        if p.trig_enable.value != "Enable" or p.trig_mode.value == "Mark" or fired:
            await p.array_data.write(frame.ravel(), verify_value=False)
            await p.image_uid.write(uid, verify_value=False)
        if self._on_observation is not None:
            result = self._on_observation(obs)
            if asyncio.iscoroutine(result):
                await result
        return frame

    def analyse(self, frame: np.ndarray) -> tuple[FrameStats, float]:
        """Statistics of *frame* (on ROI1 when enabled) and the time they took, ms."""
        p = self
        roi = None
        if p.roi_enable.value == "Enable":
            roi = Roi(p.roi_min_x.value, p.roi_min_y.value, p.roi_size_x.value,
                      p.roi_size_y.value)
        t0 = time.perf_counter()
        stats = frame_stats(frame, roi)
        return stats, (time.perf_counter() - t0) * 1e3

    async def _publish_stats(self, s: FrameStats, uid: int, ms: float) -> None:
        p = self
        for prop, value in ((p.total, s.total), (p.max_value, s.max_value),
                            (p.min_value, s.min_value), (p.centroid_x, s.centroid_x),
                            (p.centroid_y, s.centroid_y), (p.sigma_x, s.sigma_x),
                            (p.sigma_y, s.sigma_y), (p.fwhm_x, s.fwhm_x), (p.fwhm_y, s.fwhm_y),
                            (p.stats_time, ms)):
            await prop.write(value, verify_value=False)
        await p.stats_uid.write(uid, verify_value=False)



#: exposure and period bounds, s: a frame of 1 us to 1 h (a longer one would not
#: end within any client's timeout; a shorter one holds no photon)
ACQUIRE_TIME_S = (1e-6, 3600.0)
#: the most frames one Multiple acquisition takes
MAX_IMAGES = 100_000


def make_area_detector(prefix: str, machine: SimulatedMachine, *,
                       on_observation: Callable[[Observation], object] | None = None
                       ) -> AreaDetector:
    """An :class:`AreaDetector` at ``{prefix}det:`` sized for the beamline's detector.

    Parameters
    ----------
    prefix : str
        PV prefix of the whole IOC (``{P}``).
    machine : SimulatedMachine
    on_observation : callable, optional
        See :class:`AreaDetector`.
    """
    nx, ny = machine.desc.detector.pixels
    data = array_pv("image1:ArrayData", "frame, counts, row-major", nx * ny)
    cls = type(f"AreaDetector{nx}x{ny}", (AreaDetector,), {"array_data": data})
    return cls(f"{prefix}det:", machine=machine, on_observation=on_observation)
