"""Procedural style targets for training a small video-restyling demo model.

A project-trained demo model learns to restyle webcam video into a fixed vocabulary of eight styles. Its
training targets are computed here, procedurally, from real frames: every style is a pure, deterministic torch
function (CPU or CUDA, no randomness, no loops over pixels) of float frames [T, 3, H, W] in [0, 1] that returns
frames of the same shape in [0, 1]. Frames are processed independently, so a static input gives identical
output frames (the targets are temporally stable by construction).

Spatial scales (blur sigmas, outline widths, the pixel-art cell size) follow the frame size through
:func:`frame_scale` (1.0 at 256 px on the short side), so a 256x256 frame and a 64x64 one give the same look.

Also here: the registry (:data:`STYLES`, :func:`style_names`, :func:`apply_style`), the prompt vocabulary a
user may type for each style (:data:`STYLE_PROMPTS`, canonical prompt first), and the evaluation helpers that
judge a model's outputs (:func:`style_distances`, :func:`nearest_style`, :func:`edge_similarity`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Rec. 601 luma weights (R, G, B).
_LUMA = (0.299, 0.587, 0.114)
# Tolerance on the input range [0, 1] checked by apply_style (float rounding of upstream conversions).
_RANGE_TOL = 1e-3
# Smallest frame side the styles accept (reflect padding and the Sobel window need a few pixels).
MIN_SIDE = 8


# --------------------------------------------------------------------------------------------------- helpers


def frame_scale(height: int, width: int) -> float:
    """Spatial scale of a frame relative to 256 px on its short side (1.0 for 256x256, 0.25 for 64x64)."""
    return min(height, width) / 256.0


def luminance(frames: Tensor) -> Tensor:
    """Rec. 601 luma of RGB frames: [T, 3, H, W] in [0, 1] -> [T, 1, H, W] in [0, 1]."""
    r, g, b = frames[:, 0:1], frames[:, 1:2], frames[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def gaussian_kernel1d(sigma: float, device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian of radius ceil(3 sigma): [2r + 1] float32 (sigma in pixels, > 0)."""
    radius = max(1, math.ceil(3.0 * sigma))
    z = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(z**2) / (2.0 * sigma**2))
    return (k / k.sum()).float().to(device)


def _taps(x: Tensor, weights: list[float], dim: int) -> Tensor:
    """Correlate ``x`` with ``weights`` (odd length) along ``dim`` (-1 or -2), reflect padding, same size.

    A weighted sum of shifted slices, one separate multiply and add per tap (each correctly rounded), instead of
    ``conv2d``: convolution algorithms (CPU and cuDNN) depend on the batch size, so a frame's result could change
    in the last bit with the frames beside it, and a quantisation step could turn that into a visible change.
    This way every frame's output is bitwise the same alone, in any batch, and for repeated (static) frames.
    """
    r = len(weights) // 2
    size = x.shape[dim]
    pad = (r, r, 0, 0) if dim == -1 else (0, 0, r, r)
    p = F.pad(x, pad, mode="reflect")
    out = p.narrow(dim, 0, size) * weights[0]
    for i in range(1, len(weights)):
        out.add_(p.narrow(dim, i, size) * weights[i])
    return out


def separable_filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Filter every channel of [N, C, H, W] with ``kernel`` [K] (K odd) along H then W, reflect padding.

    The kernel is renormalised to sum 1 and its radius capped at the frame size minus one (reflect padding
    needs it), so tiny frames still work. Bitwise batch-independent (see :func:`_taps`). A kernel on the host
    (as :func:`gaussian_blur` and :func:`box_blur` build them) costs no device synchronisation. Returns
    [N, C, H, W].
    """
    h, w = x.shape[-2:]
    radius = kernel.numel() // 2
    r = min(radius, h - 1, w - 1)
    k = kernel.detach().double().cpu()[radius - r : radius + r + 1]
    weights = (k / k.sum()).tolist()
    return _taps(_taps(x, weights, -2), weights, -1)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding: [N, C, H, W] -> [N, C, H, W] (sigma in pixels)."""
    if sigma <= 0:
        return x
    return separable_filter(x, gaussian_kernel1d(sigma))


def box_blur(x: Tensor, radius: int) -> Tensor:
    """Separable (2r + 1)^2 box mean with reflect padding: [N, C, H, W] -> [N, C, H, W] (radius in pixels)."""
    if radius <= 0:
        return x
    return separable_filter(x, torch.ones(2 * radius + 1))


def sobel(gray: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel derivatives (gx, gy) of [N, 1, H, W], scaled by 1/8 (a unit ramp has slope 1), reflect padding.

    Returns two [N, 1, H, W] tensors (positive where intensity grows to the right / downwards).
    """
    h, w = gray.shape[-2:]
    p = F.pad(gray, (1, 1, 1, 1), mode="reflect")
    dx = p[..., :, 2:] - p[..., :, :-2]  # [N, 1, H + 2, W]
    dy = p[..., 2:, :] - p[..., :-2, :]  # [N, 1, H, W + 2]
    gx = (dx[..., 0:h, :] + dx[..., 1 : h + 1, :] * 2.0 + dx[..., 2 : h + 2, :]) * 0.125
    gy = (dy[..., :, 0:w] + dy[..., :, 1 : w + 1] * 2.0 + dy[..., :, 2 : w + 2]) * 0.125
    return gx, gy


def sobel_magnitude(gray: Tensor) -> Tensor:
    """Sobel gradient magnitude of [N, 1, H, W] (intensity per pixel): [N, 1, H, W] >= 0.

    A sharp step of height 1 gives 0.5 across the edge; a flat image gives 0.
    """
    gx, gy = sobel(gray)
    return (torch.sqrt(gx * gx + gy * gy + 1e-12) - 1e-6).clamp_min(0.0)  # finite gradient at 0


def quantize(x: Tensor, levels: int) -> Tensor:
    """Round values in [0, 1] to ``levels`` evenly spaced values k / (levels - 1): same shape."""
    n = levels - 1
    return torch.round(x.clamp(0.0, 1.0) * n) / n


def _saturate(x: Tensor, amount: float) -> Tensor:
    """Scale the chroma of [T, 3, H, W] around its luma by ``amount`` (1 = unchanged), clamped to [0, 1]."""
    y = luminance(x)
    return (y + amount * (x - y)).clamp(0.0, 1.0)


def _check_frames(frames: Tensor, check_range: bool) -> None:
    """Raise ValueError unless ``frames`` is floating [T, 3, H, W] (and, if asked, finite in [0, 1])."""
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a torch.Tensor [T, 3, H, W], got {type(frames).__name__}")
    if frames.ndim != 4:
        raise ValueError(f"frames must be 4-D [T, 3, H, W], got {frames.ndim}-D shape {tuple(frames.shape)}")
    if frames.shape[1] != 3:
        raise ValueError(
            f"frames must have 3 (RGB) channels in dim 1 [T, 3, H, W], got shape {tuple(frames.shape)}"
        )
    if not frames.is_floating_point():
        raise ValueError(
            f"frames must be floating point in [0, 1], got dtype {frames.dtype} "
            "(convert uint8 with frames.float() / 255)"
        )
    if min(frames.shape[2], frames.shape[3]) < MIN_SIDE:
        raise ValueError(
            f"frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got shape {tuple(frames.shape)}"
        )
    if check_range and frames.numel() > 0:
        lo, hi = float(frames.min()), float(frames.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
            raise ValueError(f"frames must be finite values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")


def _style(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Wrap a style body: check the shape, compute in float32, clamp to [0, 1], return the input dtype."""

    @functools.wraps(fn)
    def wrapped(frames: Tensor) -> Tensor:
        _check_frames(frames, check_range=False)
        out = fn(frames.float().clamp(0.0, 1.0)).clamp(0.0, 1.0)
        return out.to(frames.dtype)

    return wrapped


# ---------------------------------------------------------------------------------------------------- styles


@_style
def pencil_sketch(frames: Tensor) -> Tensor:
    """Grayscale colour-dodge pencil sketch: dark strokes on white paper.

    sketch = gray / (1 - blur(1 - gray)) = gray / blur(gray) (with a small offset so flat or black regions give
    white paper), then a gamma of 2 darkens the strokes. Blur sigma: 4 px at 256 px (at least 1 px). The dodge
    alone leaves bright scenes (snow, a white wall with objects) nearly blank, so outline strokes are drawn on
    top: the Sobel magnitude of the lightly blurred luma, times 4, darkens the paper by up to 0.85 (a sharp
    step of any brightness gives a full stroke, webcam noise a trace).

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] in [0, 1], the three channels equal.
    """
    h, w = frames.shape[-2:]
    gray = luminance(frames)
    blurred_inv = gaussian_blur(1.0 - gray, max(1.0, 4.0 * frame_scale(h, w)))
    eps = 0.02
    dodge = ((gray + eps) / (1.0 - blurred_inv + eps)).clamp(0.0, 1.0)
    strokes = (4.0 * sobel_magnitude(gaussian_blur(gray, max(0.5, 0.8 * frame_scale(h, w))))).clamp(0.0, 0.85)
    return (dodge**2 * (1.0 - strokes)).expand(-1, 3, -1, -1)


_PAPER = (1.0, 0.97, 0.9)  # warm paper tone (multiplies the pigment)


@_style
def watercolor(frames: Tensor) -> Tensor:
    """Watercolour painting: smoothed, lightly quantised colours, soft dark pigment edges, warm paper tone.

    Gaussian blur (1.5 px at 256 px) then a box blur, 8 levels per channel, pigment density reduced to 80 %
    (lighter, transparent washes), darkened along blurred Sobel edges (of the lightly blurred input), multiplied by a warm paper colour.

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] in [0, 1].
    """
    h, w = frames.shape[-2:]
    s = frame_scale(h, w)
    light = gaussian_blur(frames, max(0.7, 1.0 * s))
    smooth = box_blur(gaussian_blur(frames, max(1.0, 1.5 * s)), max(1, round(1.5 * s)))
    q = quantize(_saturate(smooth, 1.2), 8)
    pigment = 1.0 - 0.8 * (1.0 - q)
    edges = (sobel_magnitude(luminance(light)) * 6.0).clamp(0.0, 1.0)
    edges = gaussian_blur(edges, max(0.7, 1.0 * s))
    paper = torch.tensor(_PAPER, device=frames.device).view(1, 3, 1, 1)
    return pigment * (1.0 - 0.55 * edges) * paper


# Thermal colormap stops at luma 0, 1/6, ..., 1: black, blue, purple, red, orange, yellow, white.
_THERMAL_STOPS = (
    (0.0, 0.0, 0.0),
    (0.1, 0.0, 0.55),
    (0.5, 0.0, 0.65),
    (0.88, 0.05, 0.25),
    (1.0, 0.5, 0.0),
    (1.0, 0.88, 0.1),
    (1.0, 1.0, 1.0),
)


def thermal_colormap(value: Tensor) -> Tensor:
    """Piecewise-linear thermal colormap: [T, 1, H, W] in [0, 1] -> RGB [T, 3, H, W] in [0, 1].

    0 maps to black and 1 to white, through blue, purple, red, orange and yellow at evenly spaced stops.
    """
    stops = torch.tensor(_THERMAL_STOPS, dtype=value.dtype, device=value.device)  # [S, 3]
    n = stops.shape[0] - 1
    pos = value.clamp(0.0, 1.0).squeeze(1) * n  # [T, H, W]
    i0 = pos.floor().clamp(0, n - 1).long()
    frac = (pos - i0.to(pos.dtype)).unsqueeze(-1)
    rgb = stops[i0] * (1.0 - frac) + stops[i0 + 1] * frac  # [T, H, W, 3]
    return rgb.permute(0, 3, 1, 2)


@_style
def thermal(frames: Tensor) -> Tensor:
    """Thermal-camera look: slightly blurred luminance through :func:`thermal_colormap`.

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] in [0, 1]; black input gives black, white input gives white.
    """
    h, w = frames.shape[-2:]
    return thermal_colormap(gaussian_blur(luminance(frames), max(0.5, 1.5 * frame_scale(h, w))))


_NEON_DEFAULT = (0.25, 1.0, 1.0)  # cyan for edges of achromatic (gray) regions


@_style
def neon_edges(frames: Tensor) -> Tensor:
    """Glowing neon outlines on a black background.

    Sobel magnitude of the lightly blurred luma, less a small threshold (texture), gained and clamped, coloured by the fully saturated hue of the
    (blurred) input where it has chroma and neon cyan where it is gray, plus a blurred glow.

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] in [0, 1].
    """
    h, w = frames.shape[-2:]
    s = frame_scale(h, w)
    smooth = gaussian_blur(frames, max(0.6, 1.0 * s))
    edges = ((sobel_magnitude(luminance(smooth)) - 0.02) * 6.0).clamp(0.0, 1.0).sqrt()
    mx = smooth.amax(dim=1, keepdim=True)
    mn = smooth.amin(dim=1, keepdim=True)
    chroma = mx - mn
    hue = (smooth - mn) / (chroma + 1e-6)  # one channel 1, one 0: the saturated colour of the same hue
    weight = (chroma / 0.12).clamp(0.0, 1.0)
    default = torch.tensor(_NEON_DEFAULT, device=frames.device).view(1, 3, 1, 1)
    colour = weight * hue + (1.0 - weight) * default
    lines = edges * colour
    return lines + 0.6 * gaussian_blur(lines, max(1.0, 3.0 * s))


# Classic sepia matrix (rows: output R, G, B; columns: input R, G, B).
_SEPIA = ((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131))


@_style
def sepia_film(frames: Tensor) -> Tensor:
    """Old sepia film: sepia matrix, S-shaped contrast curve, lifted blacks and a radial vignette.

    Every step after the matrix is monotone and shared by the channels, so a gray input keeps R >= G >= B.

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] in [0, 1].
    """
    h, w = frames.shape[-2:]
    r, g, b = frames[:, 0:1], frames[:, 1:2], frames[:, 2:3]
    x = torch.cat([r * mr + g * mg + b * mb for mr, mg, mb in _SEPIA], dim=1).clamp(0.0, 1.0)
    x = 0.6 * x + 0.4 * (x * x * (3.0 - 2.0 * x))  # mild smoothstep contrast
    x = 0.06 + 0.9 * x  # faded blacks and highlights
    yy = torch.linspace(-1.0, 1.0, h, device=frames.device).view(h, 1)
    xx = torch.linspace(-1.0, 1.0, w, device=frames.device).view(1, w)
    r2 = (yy * yy + xx * xx) / 2.0  # 0 at the centre, 1 in the corners
    vignette = 1.0 - 0.45 * r2**1.5
    return x * vignette


@_style
def comic_posterize(frames: Tensor) -> Tensor:
    """Comic-book posterisation: boosted colours at 4 levels per channel with black outlines.

    Outlines are the Sobel edges of the blurred luma above a threshold, widened by round(s) px on each side
    for the frame scale s (:func:`frame_scale`): as found below 128 px on the short side, 2 px wider from 128
    to 383 px (a sharp step gives a 4-px line at the demo's 240 px). Bold ink lines read as a comic at a
    glance and survive a small autoencoder; with 1-px lines at 240 px the demo editor's output read as pixel
    art or watercolour on two of three held-out streams.

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] with values in {0, 1/3, 2/3, 1} (outlines are 0).
    """
    h, w = frames.shape[-2:]
    s = frame_scale(h, w)
    smooth = gaussian_blur(frames, max(0.8, 1.5 * s))
    q = quantize(_saturate(smooth, 1.4), 4)
    edges = (sobel_magnitude(luminance(smooth)) > 0.06).to(frames.dtype)
    r = round(s)
    if r > 0:
        edges = F.max_pool2d(edges, 2 * r + 1, stride=1, padding=r)
    return q * (1.0 - edges)


def pixel_block(height: int, width: int) -> int:
    """Pixel-art cell side in pixels: the short side / 48 rounded, at least 1 (5 px at 240 or 256 px, 1 px at
    64 px): coarse enough to read as pixel art, fine enough to keep faces and outlines."""
    return max(1, round(min(height, width) / 48))


@_style
def pixel_art(frames: Tensor) -> Tensor:
    """Retro pixel art: cell means (see :func:`pixel_block`), nearest upsampling, 6 levels per channel.

    Cells are aligned to the top-left corner; a partial last row or column of cells averages the pixels it
    covers (replicate padding). Every cell is a single colour.

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] with values in {0, 0.2, ..., 1}.
    """
    h, w = frames.shape[-2:]
    b = pixel_block(h, w)
    ph, pw = (-h) % b, (-w) % b
    x = F.pad(frames, (0, pw, 0, ph), mode="replicate") if ph or pw else frames
    cells = quantize(_saturate(F.avg_pool2d(x, b), 1.25), 6)
    up = cells.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)
    return up[:, :, :h, :w]


@_style
def negative(frames: Tensor) -> Tensor:
    """Photographic negative 1 - x.

    Args:
        frames: float [T, 3, H, W] in [0, 1].
    Returns:
        float [T, 3, H, W] in [0, 1].
    """
    return 1.0 - frames


# -------------------------------------------------------------------------------------------------- registry

STYLES: dict[str, Callable[[Tensor], Tensor]] = {
    "pencil_sketch": pencil_sketch,
    "watercolor": watercolor,
    "thermal": thermal,
    "neon_edges": neon_edges,
    "sepia_film": sepia_film,
    "comic_posterize": comic_posterize,
    "pixel_art": pixel_art,
    "negative": negative,
}
"""Every style by name, in a stable order (the index of a name is its class id)."""


def style_names() -> list[str]:
    """The style names in registry order (a fresh list)."""
    return list(STYLES)


def apply_style(name: str, frames: Tensor) -> Tensor:
    """Apply the named style to frames, after validating them.

    Args:
        name: a key of :data:`STYLES`.
        frames: float [T, 3, H, W] in [0, 1] (any floating dtype; computed in float32), H, W >= 8.
    Returns:
        The styled frames, [T, 3, H, W] in [0, 1], in the input dtype and device.
    Raises:
        ValueError: unknown name; frames not a 4-D [T, 3, H, W] floating tensor, too small, non-finite or
            outside [0, 1] (this check synchronises with the device).
    """
    fn = STYLES.get(name)
    if fn is None:
        raise ValueError(f"unknown style {name!r}; valid styles: {', '.join(STYLES)}")
    _check_frames(frames, check_range=True)
    return fn(frames)


# ------------------------------------------------------------------------------------------------- prompts

STYLE_PROMPTS: dict[str, tuple[str, ...]] = {
    "pencil_sketch": (
        "pencil sketch",
        "a pencil drawing",
        "graphite sketch",
        "hand-drawn sketch on paper",
        "black and white pencil sketch",
        "sketch it in pencil",
        "make it look like a pencil sketch",
    ),
    "watercolor": (
        "watercolor painting",
        "a watercolour painting",
        "soft watercolor wash",
        "painted in watercolors",
        "aquarelle painting",
        "watercolor art on paper",
        "make it look like a watercolor",
    ),
    "thermal": (
        "thermal camera",
        "infrared thermal image",
        "heat vision",
        "thermal imaging view",
        "heat map camera",
        "flir thermal camera look",
        "make it look like a thermal camera",
    ),
    "neon_edges": (
        "neon edges",
        "glowing neon outlines",
        "neon line art on black",
        "tron-style glowing edges",
        "bright neon edge glow",
        "cyberpunk neon outlines",
        "make the edges glow like neon",
    ),
    "sepia_film": (
        "sepia film",
        "old sepia photograph",
        "vintage sepia film",
        "antique brown-toned photo",
        "old-time film look",
        "1920s sepia movie",
        "make it look like an old sepia photo",
    ),
    "comic_posterize": (
        "comic book style",
        "posterized comic art",
        "pop art comic",
        "cartoon with bold black outlines",
        "graphic novel look",
        "cel-shaded cartoon",
        "make it look like a comic book",
    ),
    "pixel_art": (
        "pixel art",
        "8-bit pixel art",
        "retro video game graphics",
        "pixelated retro look",
        "16-bit sprite style",
        "low-resolution pixel graphics",
        "make it look like pixel art",
    ),
    "negative": (
        "photo negative",
        "inverted colors",
        "invert the colours",
        "film negative look",
        "reverse all the colors",
        "negative image",
        "make it look like a negative",
    ),
}
"""Prompts a user might type for each style: the canonical prompt first, then paraphrases (lowercase, unique)."""


# ---------------------------------------------------------------------------------------------- evaluation


def style_distances(output: Tensor, input_frames: Tensor) -> Tensor:
    """Mean absolute error of ``output`` to every style's procedural target of ``input_frames``.

    Args:
        output: a model's frames, float [T, 3, H, W] in [0, 1].
        input_frames: the frames it restyled, float [T, 3, H, W] in [0, 1].
    Returns:
        float32 [T, S] (S = len(STYLES), registry order), the per-frame MAE in [0, 1] intensity units.
    Raises:
        ValueError: invalid frames, or shapes that differ.
    """
    _check_frames(input_frames, check_range=True)
    _check_frames(output, check_range=False)
    if output.shape != input_frames.shape:
        raise ValueError(f"output shape {tuple(output.shape)} != input shape {tuple(input_frames.shape)}")
    out = output.float()
    cols = [(fn(input_frames).float() - out).abs().mean(dim=(1, 2, 3)) for fn in STYLES.values()]
    return torch.stack(cols, dim=1)


def nearest_style(output: Tensor, input_frames: Tensor) -> list[str]:
    """For each frame, the style whose target (computed from ``input_frames``) is nearest to ``output``.

    Args:
        output: a model's frames, float [T, 3, H, W] in [0, 1].
        input_frames: the frames it restyled, float [T, 3, H, W] in [0, 1].
    Returns:
        T style names (nearest by per-frame mean absolute error, see :func:`style_distances`).
    Raises:
        ValueError: invalid frames, or shapes that differ.
    """
    names = style_names()
    return [names[i] for i in style_distances(output, input_frames).argmin(dim=1).tolist()]


def edge_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Structure preservation: cosine similarity of the Sobel edge-magnitude maps of the luma, per frame.

    Args:
        a: float [T, 3, H, W] in [0, 1].
        b: float [T, 3, H, W] in [0, 1], the same shape.
    Returns:
        float32 [T] in [0, 1]; 1 for identical structure (also when both frames are flat), 0 for edges in
        disjoint places or a flat frame against a textured one.
    Raises:
        ValueError: invalid frames, or shapes that differ.
    """
    _check_frames(a, check_range=False)
    _check_frames(b, check_range=False)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    ea = sobel_magnitude(luminance(a.float())).flatten(1)
    eb = sobel_magnitude(luminance(b.float())).flatten(1)
    na, nb = ea.norm(dim=1), eb.norm(dim=1)
    cos = (ea * eb).sum(dim=1) / (na * nb).clamp_min(1e-12)
    both_flat = (na < 1e-6) & (nb < 1e-6)
    return torch.where(both_flat, torch.ones_like(cos), cos.clamp(0.0, 1.0))
