"""Recording demonstrations on a robot: one rosbag2 per episode in the layout `data.bags.read_episode` reads,
from messages as the drivers and the controller publish them. Free of ROS: `mambavla.ros.recorder_node` hands
over each message serialised (CDR, as a raw rclpy subscription delivers it) with its stamp.

    /cameras/<name>/image_raw/compressed  sensor_msgs/CompressedImage  JPEG; raw Image frames are encoded here,
                                                                       compressed ones stored as they came
    /cameras/<name>/aligned_depth_to_color/image_raw
                                          sensor_msgs/Image 16UC1 mm, with `depth`: aligned depth as it came
                                          (32FC1 m, mono16 and compressedDepth PNG are stored as 16UC1 mm)
    /joint_states, /ee_pose, /action      as published (the controller's streamed target and gripper command
                                          is /action)
    /instruction                          the episode's instruction, once at the start
    episode.json                          instruction, success, dt (the median frame interval of the first
                                          camera), cameras, image size, frames, per-topic counts

An episode goes READY -> RECORDING (start) -> saved or discarded -> RESETTING (`reset_time` s, for the
operator to reset the scene) -> READY. Its bag is written in `.partial/episode_NNNNNN` and moved up once saved: a
recorder killed mid-episode leaves it there, in a hidden folder that training and export skip, never a bag
without its metadata among the episodes. Messages arrive on callback threads and are queued; one writer thread
decodes, encodes and writes, so a slow disk or a JPEG encode never blocks a callback. The queue is bounded in
bytes (`queue_mb`: raw frames are large, state messages small and many); a message that does not fit, or that the
writer cannot store (the status's `error` says why), is dropped and counted (`dropped`, per episode in its
sidecar, and in the save's message): the figure a recording that kept up shows as 0.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mambavla.data.bags import (
    ACTION_TOPIC,
    COMPRESSED_IMAGE_TYPE,
    EE_POSE_TOPIC,
    IMAGE_TYPE,
    JOINT_STATE_TOPIC,
    SIDECAR,
    WRITER_FIELDS,
    EpisodeWriter,
    camera_topic,
    depth_topic,
)

STATE_TOPICS = (JOINT_STATE_TOPIC, EE_POSE_TOPIC, ACTION_TOPIC)
READY, RECORDING, RESETTING = "READY", "RECORDING", "RESETTING"
FRESH = 2.0  # s: a stream whose last message is older is not live
PARTIAL = ".partial"  # under root: the bags of episodes not saved yet


def next_episode_path(root: Path) -> Path:
    """The next episode's folder: numbered after every episode there, saved or left partial."""
    names = [p.name for folder in (root, root / PARTIAL) if folder.is_dir() for p in folder.iterdir()]
    taken = [int(m.group(1)) for n in names if (m := re.fullmatch(r"episode_(\d+)", n))]
    return root / f"episode_{max(taken, default=-1) + 1:06d}"


@dataclass
class Episode:
    path: Path
    instruction: str
    writer: EpisodeWriter
    started: float  # monotonic
    success: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # messages written per bag topic
    frame_stamps: list[int] = field(default_factory=list)  # ns, first camera
    image_size: tuple[int, int] | None = None
    depth_size: tuple[int, int] | None = None  # of the first depth frame: aligned depth has the colour frames' size
    frames_in: int = 0  # camera messages offered
    dropped: int = 0  # messages not written: the queue was full, or the writer could not store them
    closed: bool = False  # saved or discarded: what is still queued for it is not written


class EpisodeRecorder:
    """Episodes under `root`, one bag each. `cameras`: names; frames of the first one are the episode's steps.
    `depth`: every camera's aligned depth is recorded too (`on_depth`), and is an input an episode needs."""

    def __init__(self, root: str | Path, cameras: Sequence[str], jpeg_quality: int = 90, reset_time: float = 5.0,
                 episode_time: float = 0.0, queue_mb: float = 256.0, meta: dict | None = None,
                 record_action: bool = True, depth: bool = False):
        if not cameras:
            raise ValueError("at least one camera is needed: frames are the episode's steps")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
        if reset_time < 0 or episode_time < 0:
            raise ValueError(f"reset_time and episode_time must be >= 0 s, got {reset_time}, {episode_time}")
        from rosbags.typesys import Stores, get_typestore

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cameras = tuple(cameras)
        self.depth_cameras = self.cameras if depth else ()
        self.jpeg_quality, self.reset_time, self.episode_time = int(jpeg_quality), reset_time, episode_time
        self.meta = check_meta(dict(meta or {}))
        # without a commanded action (kinesthetic teaching: the arm is guided by hand) the reader derives the
        # actions from the measured trajectory
        self.required = STATE_TOPICS if record_action else (JOINT_STATE_TOPIC, EE_POSE_TOPIC)
        if not record_action:
            self.meta["actions"] = "derived from the measured trajectory (no commanded action recorded)"
        self._ts = get_typestore(Stores.ROS2_KILTED)
        self._queue: queue.Queue = queue.Queue()
        self._queue_budget = int(queue_mb * 1e6)
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._lock = threading.Lock()
        self.state = READY
        self.message = "ready: start an episode"
        self.episode: Episode | None = None
        self._reset_until = 0.0
        self._last_seen: dict[str, float] = {}  # input -> monotonic time of its last message
        self.frames_in = 0  # camera messages offered while recording
        self.frames_written = 0
        self.dropped = 0
        self.saved = 0
        self.discarded = 0
        self.error = ""
        self._thread = threading.Thread(target=self._write_loop, name="episode-writer", daemon=True)
        self._thread.start()

    # ---- input (callback threads) ----

    def on_camera(self, camera: str, ns: int, data: bytes, compressed: bool) -> None:
        """One camera message, CDR-serialised: sensor_msgs/Image, or CompressedImage if `compressed`."""
        self._last_seen[camera] = time.monotonic()
        episode = self.episode
        if episode is None:
            return
        self.frames_in += 1
        episode.frames_in += 1
        self._offer("camera", episode, len(data), (camera, ns, data, compressed))

    def on_depth(self, camera: str, ns: int, data: bytes, compressed: bool = False) -> None:
        """One depth message of a camera, CDR-serialised: sensor_msgs/Image, or CompressedImage (compressedDepth)
        if `compressed`."""
        self._last_seen[depth_input(camera)] = time.monotonic()
        episode = self.episode
        if episode is not None:
            self._offer("depth", episode, len(data), (camera, ns, data, compressed))

    def on_state(self, topic: str, ns: int, data: bytes) -> None:
        """One message for a bag topic of STATE_TOPICS, CDR-serialised in that topic's type."""
        self._last_seen[topic] = time.monotonic()
        episode = self.episode
        if episode is not None:
            self._offer("state", episode, len(data), (topic, ns, data))

    def _offer(self, kind: str, episode: Episode, size: int, args: tuple) -> None:
        """Queue a message for `episode`'s bag (the episode it arrived in, even if it ends before the writer gets to
        it), or count it dropped when the queue's bytes are at the budget."""
        with self._bytes_lock:
            if self._queued_bytes + size > self._queue_budget:
                self.dropped += 1
                episode.dropped += 1
                return
            self._queued_bytes += size
        self._queue.put((kind, episode, size, args))

    def missing_inputs(self) -> list[str]:
        """Inputs with no message in the last FRESH seconds."""
        now = time.monotonic()
        inputs = (*self.cameras, *map(depth_input, self.depth_cameras), *self.required)
        return [name for name in inputs if now - self._last_seen.get(name, -1e9) > FRESH]

    # ---- episode control (any thread) ----

    def start(self, instruction: str) -> tuple[bool, str]:
        instruction = (instruction or "").strip()
        with self._lock:
            self._tick()
            if self.state == RECORDING:
                return False, f"already recording {self.episode.path.name}"
            if not instruction:
                return False, "no instruction: set one (parameter instruction, topic /instruction or the 'i' key)"
            missing = self.missing_inputs()
            if missing:
                return False, (f"no messages for {FRESH:.0f} s on: {', '.join(missing)} (check the camera drivers, and "
                               "that controller_node is tracking: its ~/action is the recorded /action)")
            path = next_episode_path(self.root)
            writer = EpisodeWriter(self.root / PARTIAL / path.name, self.cameras, (0, 0), dt=0.0, image_format="jpeg",
                                   jpeg_quality=self.jpeg_quality, depth_cameras=self.depth_cameras,
                                   meta={**self.meta, "instruction": instruction, "source": "mambavla-record"})
            episode = Episode(path, instruction, writer, time.monotonic())
            self._queue.put(("instruction", episode, 0, (instruction,)))  # the bag's first message
            self.episode, self.state, self.message = episode, RECORDING, f"recording {path.name}: {instruction!r}"
            return True, self.message

    def mark_success(self, success: bool = True) -> tuple[bool, str]:
        with self._lock:
            if self.episode is None:
                return False, "not recording: nothing to mark"
            self.episode.success = success
            return True, f"{self.episode.path.name} marked {'success' if success else 'failure'}"

    def save(self) -> tuple[bool, str]:
        return self._finish(save=True)

    def discard(self) -> tuple[bool, str]:
        return self._finish(save=False)

    def _finish(self, save: bool) -> tuple[bool, str]:
        with self._lock:
            if self.state != RECORDING:
                return False, "not recording"
            # from here on callbacks queue nothing for it, and a start (after reset_time) opens the next one
            episode, self.episode = self.episode, None
            self.state = RESETTING
            self._reset_until = time.monotonic() + self.reset_time
        done = threading.Event()
        result: list = []
        self._queue.put(("finish", episode, 0, (save, done, result)))  # after every message queued before it
        done.wait()
        ok, text = result
        with self._lock:
            if self.state != RECORDING:
                self.message = f"{text}; reset the scene ({self.reset_time:.0f} s)"
        return ok, text

    def status(self) -> dict:
        with self._lock:
            self._tick()
            episode = self.episode
            return {
                "state": self.state, "message": self.message, "root": str(self.root),
                "episode": episode.path.name if episode else "",
                "instruction": episode.instruction if episode else "",
                "seconds": round(time.monotonic() - episode.started, 1) if episode else 0.0,
                "success": episode.success if episode else False,
                "reset_left": round(max(0.0, self._reset_until - time.monotonic()), 1)
                if self.state == RESETTING else 0.0,
                "frames_in": self.frames_in, "frames_written": self.frames_written, "dropped": self.dropped,
                "queued": self._queue.qsize(), "queued_mb": round(self._queued_bytes / 1e6, 1), "saved": self.saved,
                "discarded": self.discarded, "error": self.error,
                "missing": ", ".join(self.missing_inputs()),
            }

    def _tick(self) -> None:
        if self.state == RESETTING and time.monotonic() >= self._reset_until:
            self.state, self.message = READY, "ready: start an episode"

    def poll(self) -> str | None:
        """Time-driven transitions: 'save' when the episode ran `episode_time` s (the caller saves), else None."""
        with self._lock:
            self._tick()
            running = time.monotonic() - self.episode.started if self.episode is not None else 0.0
            if self.state == RECORDING and self.episode_time > 0 and running >= self.episode_time:
                return "save"
        return None

    def close(self) -> None:
        if self.state == RECORDING:
            self.discard()
        self._queue.put(None)
        self._thread.join(timeout=10.0)

    # ---- writer thread ----

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, episode, size, args = item
            if size:
                with self._bytes_lock:
                    self._queued_bytes -= size
            try:
                self._handle(kind, episode, args)
            except Exception as err:  # a bad message must not end the recorder; the status shows it
                self.error = f"{type(err).__name__}: {err}"
                if kind in ("camera", "depth", "state"):  # not in the bag: counted with the messages the queue dropped
                    with self._bytes_lock:
                        self.dropped += 1
                        episode.dropped += 1
                if kind == "finish":
                    _, done, result = args
                    result.extend([False, f"could not finish the episode: {self.error}"])
                    done.set()

    def _handle(self, kind: str, episode: Episode, args: tuple) -> None:
        if kind == "finish":
            save, done, result = args
            result.extend(self._close(episode, save))
            done.set()
        elif episode.closed:  # offered while it was recording, queued after its finish
            return
        elif kind == "instruction":
            episode.writer.write_instruction(time.time(), *args)
        elif kind == "camera":
            self._write_camera(episode, *args)
        elif kind == "depth":
            self._write_depth(episode, *args)
        else:
            topic, ns, data = args
            episode.writer.write_serialized(topic, ns, data)
            episode.counts[topic] = episode.counts.get(topic, 0) + 1

    def _write_camera(self, episode: Episode, camera: str, ns: int, data: bytes, compressed: bool) -> None:
        from mambavla.data.images import encode_jpeg, image_to_rgb, source_size

        topic = camera_topic(camera) + "/compressed"
        msg = self._ts.deserialize_cdr(data, COMPRESSED_IMAGE_TYPE if compressed else IMAGE_TYPE)
        stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec) or ns
        if compressed:
            size = source_size(msg)  # from the JPEG or PNG header: every frame checked, none decoded
            out = data
        else:
            rgb = image_to_rgb(msg, resize=False)
            size = rgb.shape[:2]
            T = self._ts.types
            jpeg = np.frombuffer(encode_jpeg(rgb, self.jpeg_quality), np.uint8)
            compressed_msg = T[COMPRESSED_IMAGE_TYPE](header=msg.header, format="rgb8; jpeg compressed bgr8", data=jpeg)
            out = self._ts.serialize_cdr(compressed_msg, COMPRESSED_IMAGE_TYPE)
        if episode.image_size is None:
            episode.image_size = tuple(size)
        elif tuple(size) != episode.image_size:
            raise ValueError(f"camera {camera!r} sent {size[1]}x{size[0]}, the episode's frames are "
                             f"{episode.image_size[1]}x{episode.image_size[0]}: every camera needs one size")
        episode.writer.write_serialized(topic, ns, bytes(out))
        episode.counts[topic] = episode.counts.get(topic, 0) + 1
        if camera == self.cameras[0]:
            episode.frame_stamps.append(stamp)
        self.frames_written += 1

    def _write_depth(self, episode: Episode, camera: str, ns: int, data: bytes, compressed: bool) -> None:
        from mambavla.data.images import depth_message_fields, depth_to_mm

        msg = self._ts.deserialize_cdr(data, COMPRESSED_IMAGE_TYPE if compressed else IMAGE_TYPE)
        depth = depth_to_mm(msg)  # every frame decoded: a truncated or non-depth one never reaches the bag
        size = tuple(depth.shape)
        if episode.depth_size is None:
            episode.depth_size = size
        reference = episode.image_size or episode.depth_size
        if size != reference:
            raise ValueError(f"depth of camera {camera!r} is {size[1]}x{size[0]}, the episode's "
                             f"{'colour' if episode.image_size else 'depth'} frames are {reference[1]}x{reference[0]}: "
                             "record depth aligned to the colour frames (realsense-ros: align_depth.enable)")
        if not compressed and str(msg.encoding) == "16UC1" and not msg.is_bigendian:
            out = data  # as it came
        else:  # the bag's depth is one format, 16UC1 mm; from a PNG or 16-bit frame losslessly
            out = self._ts.serialize_cdr(self._ts.types[IMAGE_TYPE](header=msg.header, **depth_message_fields(depth)),
                                         IMAGE_TYPE)
        topic = depth_topic(camera)
        episode.writer.write_serialized(topic, ns, bytes(out))
        episode.counts[topic] = episode.counts.get(topic, 0) + 1

    def _close(self, episode: Episode, save: bool) -> tuple[bool, str]:
        episode.closed = True
        try:
            return self._close_bag(episode, save)
        finally:
            partial = self.root / PARTIAL
            if partial.is_dir() and not any(partial.iterdir()):  # kept while it holds a bag a killed run left
                partial.rmdir()

    def _close_bag(self, episode: Episode, save: bool) -> tuple[bool, str]:
        name = episode.path.name
        if not save:
            episode.writer.abort()
            _remove(episode.writer.path)
            self.discarded += 1
            return True, f"discarded {name}"
        topics = [camera_topic(c) + "/compressed" for c in self.cameras] + [depth_topic(c) for c in self.depth_cameras]
        empty = [t for t in topics + list(self.required) if not episode.counts.get(t)]
        misaligned = self.depth_cameras and episode.depth_size not in (None, episode.image_size)
        if empty or len(episode.frame_stamps) < 2 or misaligned:
            episode.writer.abort()
            _remove(episode.writer.path)
            self.discarded += 1
            if empty:
                what = f"no messages on {', '.join(empty)}"
            elif misaligned:
                what = f"depth frames of {episode.depth_size} (H, W), colour frames of {episode.image_size}"
            else:
                what = "fewer than 2 frames"
            return False, f"{name} not saved ({what}): training could not read it"
        stamps = np.sort(np.array(episode.frame_stamps, dtype=np.int64))
        steps = np.diff(stamps) / 1e9
        dt = float(np.median(steps))
        writer = episode.writer
        writer.dt, writer.image_size, writer.frames = dt, episode.image_size, len(stamps)
        irregular = int(np.sum(np.abs(steps - dt) > 0.5 * dt))
        writer.close(success=bool(episode.success), counts=dict(episode.counts),
                     seconds=round(float(stamps[-1] - stamps[0]) / 1e9, 3), irregular_steps=irregular,
                     frames_received=episode.frames_in, dropped=episode.dropped)
        writer.path.rename(episode.path)
        self.saved += 1
        text = f"saved {name}: {len(stamps)} frames at {1 / dt:.1f} Hz, success {episode.success}"
        if irregular:  # training refuses a bag whose frame rate changes: say so while the scene is still set up
            text += (f"; warning: {irregular} of {len(steps)} frame intervals are more than half off {dt * 1e3:.0f} ms "
                     f"(the camera {self.cameras[0]!r} did not keep its rate)")
        if episode.dropped:
            text += (f"; warning: {episode.dropped} messages dropped: the writer did not keep up or could not store "
                     f"them (dropped in {SIDECAR}, the reason in the status's error)")
        return True, text


# episode.json fields the recorder and its bag writer set, which a caller's metadata may not
RECORDER_FIELDS = WRITER_FIELDS | {"instruction", "source", "success", "counts", "seconds", "irregular_steps",
                                   "frames_received", "dropped", "actions"}


def check_meta(meta: dict) -> dict:
    """`meta` (extra episode.json fields: operator, cell ...) if it sets none of RECORDER_FIELDS: another value
    there would misdescribe the bag to training."""
    owned = sorted(set(meta) & RECORDER_FIELDS)
    if owned:
        raise ValueError(f"episode_meta sets {owned}, which the recorder writes itself; use other names")
    return meta


def depth_input(camera: str) -> str:
    """A camera's depth stream as `missing_inputs` names it."""
    return f"{camera} depth"


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
