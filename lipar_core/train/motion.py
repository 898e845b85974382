"""Synthetic motion: a still animated into a clip by a smooth random camera path and moving objects.

:class:`SyntheticMotion` samples a :class:`MotionSpec` (a :class:`CameraPath`: sub-pixel pan plus slight zoom,
sampled with ``grid_sample`` from a canvas larger than the output; and 0-3 moving objects, each a
:class:`MovingObject`: a patch cut from a donor still or a soft shape, on a linear (bouncing) or sinusoidal path,
alpha-blended with soft edges) and renders it. Some clips have a static camera, some of those no object at all: the editor's pruning path needs
static regions to learn from.

Coordinates: pixel positions are continuous, pixel ``x`` covering [x, x + 1); camera positions are in
``grid_sample``'s normalised canvas units ([-1, 1] across the canvas). Frames are uint8 [T, H, W, 3] RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lipar_core.train.seeding import bernoulli, randint, uniform
from lipar_core.train.sources import check_positive, check_size
from lipar_core.video_io import fit_frames

RENDER_CHUNK_FRAMES = 16
"""Synthetic clips are rendered this many frames at a time (bounds the sampling grids' memory)."""


@dataclass(frozen=True)
class CameraPath:
    """A smooth camera path over a canvas: per axis ``centre + amplitude * sin(omega * t + phase)`` in
    normalised canvas units (t in frames, omega in rad/frame), and the view scale
    ``zoom - zoom_amplitude * cos(zoom_omega * t + zoom_phase)`` (1 = the output covers exactly its own size
    in canvas pixels, < 1 = zoomed in). Static when both amplitudes are 0."""

    centre: tuple[float, float]
    amplitude: tuple[float, float]
    omega: tuple[float, float]
    phase: tuple[float, float]
    zoom: float = 1.0
    zoom_amplitude: float = 0.0
    zoom_omega: float = 0.0
    zoom_phase: float = 0.0

    @property
    def static(self) -> bool:
        return self.amplitude == (0.0, 0.0) and self.zoom_amplitude == 0.0

    def at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, scale) at frame times t float64 [T]: each float64 [T]."""
        x = self.centre[0] + self.amplitude[0] * torch.sin(self.omega[0] * t + self.phase[0])
        y = self.centre[1] + self.amplitude[1] * torch.sin(self.omega[1] * t + self.phase[1])
        s = self.zoom - self.zoom_amplitude * torch.cos(self.zoom_omega * t + self.zoom_phase)
        return x, y, s


@dataclass(frozen=True)
class MovingObject:
    """An RGBA sprite moving over the output frame.

    ``texture`` is float32 [4, h, w]: premultiplied RGB (0-255) and alpha (0-1, exactly 0 on the border so
    nothing leaks outside the sprite). Its centre, in output pixels (x, y), follows either a ``linear`` path
    ``start + velocity * t`` bouncing off the frame edges (centre kept in [0, width] x [0, height]), or a
    ``sine`` path ``start + amplitude * sin(omega * t + phase)`` (velocity in px/frame, omega in rad/frame).
    """

    texture: torch.Tensor
    path: Literal["linear", "sine"]
    start: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    amplitude: tuple[float, float] = (0.0, 0.0)
    omega: tuple[float, float] = (0.0, 0.0)
    phase: tuple[float, float] = (0.0, 0.0)

    def centres(self, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Sprite centres at frame times t float64 [T]: float64 [T, 2] (x, y) in output pixels."""
        out = []
        for axis, extent in ((0, width), (1, height)):
            if self.path == "linear":
                p = self.start[axis] + self.velocity[axis] * t
                m = torch.remainder(p, 2 * extent)
                out.append(torch.where(m <= extent, m, 2 * extent - m))
            else:
                out.append(
                    self.start[axis]
                    + self.amplitude[axis] * torch.sin(self.omega[axis] * t + self.phase[axis])
                )
        return torch.stack(out, dim=-1)


@dataclass(frozen=True)
class MotionSpec:
    """Everything that animates one still: the camera, the objects, and a left-right flip of the still."""

    camera: CameraPath
    objects: tuple[MovingObject, ...]
    hflip: bool = False


def _soft_alpha(h: int, w: int, shape: Literal["ellipse", "rect"], feather: float) -> torch.Tensor:
    """Soft-edged mask float32 [h, w] in [0, 1], 0 on the outermost pixel ring, ramping up over ``feather``
    pixels inside the shape."""
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    # Distance inside the shape's boundary, in pixels; the boundary sits one pixel inside the texture.
    if shape == "rect":
        dy = torch.minimum(ys, h - ys) - 1.0
        dx = torch.minimum(xs, w - xs) - 1.0
        inside = torch.minimum(dy[:, None], dx[None, :])
    else:
        ay, ax = h / 2 - 1.0, w / 2 - 1.0
        r = torch.sqrt(((ys[:, None] - h / 2) / ay) ** 2 + ((xs[None, :] - w / 2) / ax) ** 2)
        inside = (1.0 - r) * min(ay, ax)
    return (inside / feather).clamp(0.0, 1.0)


class SyntheticMotion:
    """Animates a still into a clip of height x width frames: random smooth camera motion and moving objects.

    Args:
        height, width: output frame size in pixels.
        margin: canvas overscan per side, as a fraction of the output size; the still is fitted to a canvas of
            about (1 + 2 * margin) times the output, which bounds the pan range.
        max_objects: most moving objects per clip.
        static_camera_prob: probability of a static camera.
        empty_static_prob: probability that a static-camera clip has no object at all (a frozen clip).
        pan_speed: range of the camera's peak pan speed, output pixels per frame.
        max_zoom: largest zoom-in, as a fraction of the view (0.1 = the view shrinks to 90 %).
        zoom_period: range of the zoom oscillation period, frames.
        object_size: range of an object's side, as a fraction of min(height, width).
        object_speed: range of an object's (peak) speed, output pixels per frame.
        patch_prob: probability that an object is a patch of a donor still (else a soft shape).
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        margin: float = 0.1,
        max_objects: int = 3,
        static_camera_prob: float = 0.3,
        empty_static_prob: float = 0.5,
        pan_speed: tuple[float, float] = (0.25, 2.0),
        max_zoom: float = 0.1,
        zoom_period: tuple[float, float] = (48.0, 192.0),
        object_size: tuple[float, float] = (0.12, 0.35),
        object_speed: tuple[float, float] = (0.5, 3.0),
        patch_prob: float = 0.6,
    ) -> None:
        check_size(height, width)
        if margin <= 0:
            raise ValueError(f"margin must be > 0 (the canvas must be larger than the output), got {margin}")
        if max_objects < 0:
            raise ValueError(f"max_objects must be >= 0, got {max_objects}")
        self.height, self.width = height, width
        # Even overscan per axis: a centred, unzoomed view samples canvas pixel centres exactly.
        self.canvas_h = height + 2 * math.ceil(height * margin)
        self.canvas_w = width + 2 * math.ceil(width * margin)
        self.max_objects = max_objects
        self.static_camera_prob = static_camera_prob
        self.empty_static_prob = empty_static_prob
        self.pan_speed = pan_speed
        self.max_zoom = max_zoom
        self.zoom_period = zoom_period
        self.object_size = object_size
        self.object_speed = object_speed
        self.patch_prob = patch_prob

    # ------------------------------------------------------------------ sampling

    def pan_range(self) -> tuple[float, float]:
        """Largest |camera centre| per axis (x, y), normalised canvas units, keeping an unzoomed view inside."""
        return 1.0 - self.width / self.canvas_w, 1.0 - self.height / self.canvas_h

    def sample_camera(self, g: torch.Generator, static: bool) -> CameraPath:
        """A random camera path inside the canvas (static: a random fixed pose)."""
        rx, ry = self.pan_range()
        if static:
            zoom = 1.0 - uniform(g, 0.0, self.max_zoom)
            pose = (uniform(g, -rx, rx), uniform(g, -ry, ry))
            return CameraPath(
                centre=pose, amplitude=(0.0, 0.0), omega=(0.0, 0.0), phase=(0.0, 0.0), zoom=zoom
            )
        speed = uniform(g, *self.pan_speed)
        direction = uniform(g, 0.0, 2 * math.pi)
        amp: list[float] = []
        centre: list[float] = []
        omega: list[float] = []
        phase: list[float] = []
        for r, canvas, component in (
            (rx, self.canvas_w, math.cos(direction)),
            (ry, self.canvas_h, math.sin(direction)),
        ):
            a = r * uniform(g, 0.4, 1.0)
            amp.append(a)
            centre.append(uniform(g, -1.0, 1.0) * (r - a))
            # Peak speed a * omega (normalised units/frame) = speed * |component| output pixels/frame.
            omega.append(speed * abs(component) * (2.0 / canvas) / a)
            phase.append(uniform(g, 0.0, 2 * math.pi))
        zoom_amp = uniform(g, 0.0, self.max_zoom) / 2
        return CameraPath(
            centre=(centre[0], centre[1]),
            amplitude=(amp[0], amp[1]),
            omega=(omega[0], omega[1]),
            phase=(phase[0], phase[1]),
            zoom=1.0 - zoom_amp,
            zoom_amplitude=zoom_amp,
            zoom_omega=2 * math.pi / uniform(g, *self.zoom_period),
            zoom_phase=uniform(g, 0.0, 2 * math.pi),
        )

    def sample_object(self, g: torch.Generator, donor: torch.Tensor | None) -> MovingObject:
        """A random sprite (donor patch or soft shape) on a random linear or sinusoidal path."""
        side = min(self.height, self.width)
        oh = max(4, round(side * uniform(g, *self.object_size)))
        ow = max(4, round(oh * uniform(g, 0.6, 1.6)))
        shape: Literal["ellipse", "rect"] = "ellipse" if bernoulli(g, 0.5) else "rect"
        alpha = _soft_alpha(oh, ow, shape, feather=max(1.5, 0.12 * min(oh, ow)))
        if donor is not None and bernoulli(g, self.patch_prob):
            src = fit_frames(donor.permute(2, 0, 1)[None].float(), self.height, self.width)[0]
            y0 = randint(g, 0, self.height - min(oh, self.height))
            x0 = randint(g, 0, self.width - min(ow, self.width))
            rgb = src[:, y0 : y0 + oh, x0 : x0 + ow]
            if rgb.shape[-2:] != (oh, ow):
                rgb = F.interpolate(rgb[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
        else:
            # A colour with a linear gradient across it, so the shape has texture to track.
            c0 = torch.rand(3, 1, 1, generator=g) * 255
            c1 = torch.rand(3, 1, 1, generator=g) * 255
            angle = uniform(g, 0.0, 2 * math.pi)
            yy = torch.linspace(-0.5, 0.5, oh)[:, None]
            xx = torch.linspace(-0.5, 0.5, ow)[None, :]
            ramp = (xx * math.cos(angle) + yy * math.sin(angle) + 0.5).clamp(0, 1)
            rgb = c0 + (c1 - c0) * ramp
        texture = torch.cat([rgb * alpha, alpha[None]]).contiguous()

        speed = uniform(g, *self.object_speed)
        direction = uniform(g, 0.0, 2 * math.pi)
        if bernoulli(g, 0.5):
            start = (uniform(g, 0.0, self.width), uniform(g, 0.0, self.height))
            velocity = (speed * math.cos(direction), speed * math.sin(direction))
            return MovingObject(texture=texture, path="linear", start=start, velocity=velocity)
        # Sinusoid centred in the middle half of the frame with amplitude <= a quarter of the frame: the
        # centre never leaves the frame.
        start = (uniform(g, 0.25, 0.75) * self.width, uniform(g, 0.25, 0.75) * self.height)
        amplitude = (
            uniform(g, 0.1, 0.25) * self.width * abs(math.cos(direction)),
            uniform(g, 0.1, 0.25) * self.height * abs(math.sin(direction)),
        )
        omega = tuple(speed / max(a, 1.0) for a in amplitude)
        phase = (uniform(g, 0.0, 2 * math.pi), uniform(g, 0.0, 2 * math.pi))
        return MovingObject(
            texture=texture,
            path="sine",
            start=start,
            amplitude=amplitude,
            omega=(omega[0], omega[1]),
            phase=phase,
        )

    def sample(
        self,
        g: torch.Generator,
        donor: torch.Tensor | None = None,
        *,
        static_camera: bool | None = None,
        num_objects: int | None = None,
    ) -> MotionSpec:
        """A random :class:`MotionSpec`. ``static_camera`` / ``num_objects`` force those choices (None draws
        them: a static camera with probability ``static_camera_prob``, then no object with probability
        ``empty_static_prob``, else 1..max_objects; a moving camera gets 0..max_objects). ``donor`` is the
        still (uint8 [H, W, 3]) object patches are cut from; without one every object is a shape."""
        static = bernoulli(g, self.static_camera_prob) if static_camera is None else static_camera
        if num_objects is None:
            if static:
                empty = bernoulli(g, self.empty_static_prob) or self.max_objects == 0
                num_objects = 0 if empty else randint(g, 1, self.max_objects)
            else:
                num_objects = randint(g, 0, self.max_objects)
        elif num_objects < 0:
            raise ValueError(f"num_objects must be >= 0, got {num_objects}")
        camera = self.sample_camera(g, static)
        hflip = bernoulli(g, 0.5)
        objects = tuple(self.sample_object(g, donor) for _ in range(num_objects))
        return MotionSpec(camera=camera, objects=objects, hflip=hflip)

    # ----------------------------------------------------------------- rendering

    def render(self, still: torch.Tensor, spec: MotionSpec, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Render ``frames`` frames of ``still`` (uint8 [h, w, 3], any size) moved by ``spec``.

        Returns:
            (clip uint8 [frames, height, width, 3], object coverage float32 [frames, height, width]: the
            largest object alpha at each pixel, 0 where no object is).
        """
        check_positive("frames", frames)
        if still.ndim != 3 or still.shape[-1] != 3:
            raise ValueError(f"still must be [H, W, 3], got {tuple(still.shape)}")
        h, w = self.height, self.width
        canvas = fit_frames(still.permute(2, 0, 1)[None].float(), self.canvas_h, self.canvas_w)
        if spec.hflip:
            canvas = canvas.flip(-1)
        # Output pixel centres in normalised output units, [-1, 1] across the frame (align_corners=False).
        ux = (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1
        uy = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1
        px = torch.arange(w, dtype=torch.float64) + 0.5
        py = torch.arange(h, dtype=torch.float64) + 0.5
        clip = torch.empty(frames, h, w, 3, dtype=torch.uint8)
        coverage = torch.zeros(frames, h, w, dtype=torch.float32)
        for t0 in range(0, frames, RENDER_CHUNK_FRAMES):
            t = torch.arange(t0, min(t0 + RENDER_CHUNK_FRAMES, frames), dtype=torch.float64)
            n = len(t)
            cx, cy, s = spec.camera.at(t)
            gx = cx[:, None, None] + ux[None, None, :] * (s * w / self.canvas_w)[:, None, None]
            gy = cy[:, None, None] + uy[None, :, None] * (s * h / self.canvas_h)[:, None, None]
            grid = torch.stack([gx.expand(n, h, w), gy.expand(n, h, w)], dim=-1).float()
            out = F.grid_sample(
                canvas.expand(n, -1, -1, -1),
                grid,
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )
            for obj in spec.objects:
                oh, ow = obj.texture.shape[-2:]
                c = obj.centres(t, h, w)
                lx = 2 * (px[None, None, :] - c[:, 0, None, None]) / ow
                ly = 2 * (py[None, :, None] - c[:, 1, None, None]) / oh
                ogrid = torch.stack([lx.expand(n, h, w), ly.expand(n, h, w)], dim=-1).float()
                rgba = F.grid_sample(
                    obj.texture[None].expand(n, -1, -1, -1),
                    ogrid,
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=False,
                )
                a = rgba[:, 3:4]
                out = out * (1 - a) + rgba[:, :3]
                coverage[t0 : t0 + n] = torch.maximum(coverage[t0 : t0 + n], a[:, 0])
            clip[t0 : t0 + n] = out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return clip, coverage

    def __call__(
        self,
        still: torch.Tensor,
        frames: int,
        g: torch.Generator,
        donor: torch.Tensor | None = None,
        *,
        static_camera: bool | None = None,
        num_objects: int | None = None,
    ) -> torch.Tensor:
        """Sample a spec and render it: uint8 [frames, height, width, 3]."""
        spec = self.sample(g, donor, static_camera=static_camera, num_objects=num_objects)
        return self.render(still, spec, frames)[0]
