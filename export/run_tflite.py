#!/usr/bin/env python3
"""Run an exported segmentation model (`.tflite`) on images, on the device.

    python run_tflite.py MODEL.tflite IMAGE [IMAGE ...] --out DIR [--threads N]

Needs only `ai-edge-litert`, `numpy` and `pillow` (no TensorFlow, no Keras):

    pip install ai-edge-litert numpy pillow

Each image is letterboxed (resized keeping its aspect ratio, padded with the
mean colour) to the model's input size, run, and the prediction is cropped back
to the image region and resized to the original size. For every image it
writes `<name>_mask.png` (class ids as a colour-palette PNG: the pixel value is
the class id) and `<name>_overlay.png` (the image with classes tinted), and
prints the inference latency. Float, int8 and uint8 models and both outputs of
`msattn export` (logits `(1, H, W, C)` or labels `(1, H, W)`) are handled.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image, ImageOps, UnidentifiedImageError

# Padding colour: the ImageNet mean, which the model's normalization maps to ~0
# (the colour training pads with).
PAD_RGB = (124, 116, 104)
OVERLAY_ALPHA = 0.5
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


MAX_IMAGE_PIXELS = 4096 * 4096


class RunnerError(Exception):
    """A problem with the user's model, images or arguments (exit status 2)."""


def palette(num_colors=256):
    """The PASCAL VOC colour map: class 0 black, well separated colours after."""
    colors = np.zeros((num_colors, 3), np.uint8)
    for index in range(num_colors):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colors[index] = (red, green, blue)
    return colors


# --- model ----------------------------------------------------------------------


class Model:
    """A one-input, one-output segmentation model in the LiteRT interpreter."""

    def __init__(self, path, threads=None):
        if not os.path.isfile(path):
            raise RunnerError(f"model file not found: {path}")
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise RunnerError(f"cannot load {path} as a LiteRT model: {error}") from None
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1:
            raise RunnerError(f"{path}: expected 1 input, the model has {len(inputs)}.")
        if len(outputs) != 1:
            raise RunnerError(f"{path}: expected 1 output, the model has {len(outputs)}.")
        self.input, self.output = inputs[0], outputs[0]
        shape = tuple(int(d) for d in self.input["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise RunnerError(f"{path}: expected an input of shape (1, H, W, 3); got {shape}.")
        if np.dtype(self.input["dtype"]) not in (np.float32, np.uint8, np.int8):
            raise RunnerError(
                f"{path}: expected a float32, uint8 or int8 input; got "
                f"{np.dtype(self.input['dtype']).name}."
            )
        self.height, self.width = shape[1], shape[2]
        out_shape = tuple(int(d) for d in self.output["shape"])
        if out_shape[:3] != (1, self.height, self.width) or len(out_shape) not in (3, 4):
            raise RunnerError(
                f"{path}: expected an output of shape (1, {self.height}, {self.width}, C) "
                f"(logits) or (1, {self.height}, {self.width}) (labels); got {out_shape}."
            )
        self.outputs_labels = len(out_shape) == 3

    def _quantize(self, image):
        dtype = np.dtype(self.input["dtype"])
        if dtype == np.float32:
            return image.astype(np.float32)
        scale, zero_point = self.input["quantization"]
        values = image.astype(np.float32) / scale + zero_point if scale else image
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)

    def labels(self, image, runs=1):
        """Class ids (H, W) for one (H, W, 3) uint8 image, and latencies in ms."""
        self.interpreter.set_tensor(self.input["index"], self._quantize(image)[None])
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append((time.perf_counter() - start) * 1000.0)
        result = self.interpreter.get_tensor(self.output["index"])[0]
        if not self.outputs_labels:
            # Dequantizing keeps the argmax (positive scale); done for clarity.
            scale, zero_point = self.output["quantization"]
            if np.dtype(self.output["dtype"]) != np.float32 and scale:
                result = (result.astype(np.float32) - zero_point) * scale
            result = result.argmax(-1)
        return result.astype(np.int32), times


# --- images ---------------------------------------------------------------------


def load_rgb(path):
    """An image file as uint8 RGB (H, W, 3), whatever its mode."""
    if not os.path.isfile(path):
        raise RunnerError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            # The package's limit (keras_msattn.data.images.MAX_IMAGE_PIXELS), from the
            # header: checked before decoding, so memory stays bounded.
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise RunnerError(
                    f"{path}: image of {width}x{height} pixels is larger than the "
                    f"{MAX_IMAGE_PIXELS / 1e6:.1f} megapixels this runner decodes; downscale it"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise RunnerError(f"cannot read image {path}: {error}") from None
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, np.uint8)
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image, np.float64)
        # 16-bit grey (also stored as 32-bit "I" by some decoders): 0..65535 -> 0..255.
        eight_bit = mode == "I" and values.max(initial=0) <= 255
        grey = values if eight_bit else values / 257.0
        grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        values = np.asarray(image, np.float64)
        grey = values * 255.0 if values.max(initial=0) <= 1.0 else values
        grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        # Transparent pixels are shown on white, as image viewers do.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), np.uint8)
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(image.convert("RGB"), np.uint8)
    raise RunnerError(f"{path}: unsupported image mode {mode!r}; save it as 8-bit RGB.")


def letterbox(image, height, width):
    """(canvas uint8 (height, width, 3), (top, left, new_h, new_w)) keeping the aspect."""
    source_height, source_width = image.shape[:2]
    scale = min(height / source_height, width / source_width)
    new_height = max(1, min(height, round(source_height * scale)))
    new_width = max(1, min(width, round(source_width * scale)))
    resized = Image.fromarray(image).resize((new_width, new_height), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), PAD_RGB)
    top, left = (height - new_height) // 2, (width - new_width) // 2
    canvas.paste(resized, (left, top))
    return np.asarray(canvas, np.uint8), (top, left, new_height, new_width)


def restore(labels, box, size):
    """Crop the prediction to the image region and resize it to `size` (H, W)."""
    top, left, new_height, new_width = box
    region = labels[top : top + new_height, left : left + new_width].astype(np.uint8)
    restored = Image.fromarray(region).resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(restored, np.uint8)


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it
    os.umask(mask)
    return mask


def _save_png(image, path):
    # Write under a temporary name in the same folder, then rename: never a half PNG.
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=".png", dir=folder)
    os.close(handle)
    try:
        image.save(temporary, format="PNG")
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_outputs(image, labels, out_dir, stem, colors):
    mask = Image.frombytes(
        "P", labels.shape[::-1], np.ascontiguousarray(labels, np.uint8).tobytes()
    )
    mask.putpalette(colors.reshape(-1).tolist())
    mask_path = os.path.join(out_dir, f"{stem}_mask.png")
    _save_png(mask, mask_path)
    tint = colors[labels].astype(np.float32)
    blended = image.astype(np.float32) * (1 - OVERLAY_ALPHA) + tint * OVERLAY_ALPHA
    foreground = (labels != 0)[..., None]
    overlay = np.where(foreground, blended, image.astype(np.float32))
    overlay_path = os.path.join(out_dir, f"{stem}_overlay.png")
    _save_png(Image.fromarray(np.round(overlay).astype(np.uint8)), overlay_path)
    return mask_path, overlay_path


def _stems(paths):
    stems, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_{count}")
    return stems


# --- command line ---------------------------------------------------------------


def run(args):
    if args.threads is not None and args.threads < 1:
        raise RunnerError(f"--threads must be >= 1; got {args.threads}.")
    if args.runs < 1:
        raise RunnerError(f"--runs must be >= 1; got {args.runs}.")
    model = Model(args.model, threads=args.threads)
    images = [load_rgb(path) for path in args.images]  # every file checked before any work
    os.makedirs(args.out, exist_ok=True)
    colors = palette()
    latencies = []
    print(
        f"{args.model}: input {model.height}x{model.width} "
        f"{np.dtype(model.input['dtype']).name}, output "
        f"{'labels' if model.outputs_labels else 'logits'}, threads {args.threads or 'default'}"
    )
    model.labels(letterbox(images[0], model.height, model.width)[0])  # warm-up
    for path, stem, image in zip(args.images, _stems(args.images), images, strict=True):
        canvas, box = letterbox(image, model.height, model.width)
        labels, times = model.labels(canvas, runs=args.runs)
        if labels.max(initial=0) > 255:
            raise RunnerError(f"{args.model}: class ids above 255 do not fit a PNG palette.")
        restored = restore(labels, box, image.shape[:2])
        mask_path, overlay_path = save_outputs(image, restored, args.out, stem, colors)
        latency = statistics.median(times)
        latencies.append(latency)
        print(f"{path}: {latency:.2f} ms -> {mask_path}, {overlay_path}")
    print(f"median latency: {statistics.median(latencies):.2f} ms over {len(latencies)} image(s)")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        description="Segment images with an exported LiteRT (.tflite) model."
    )
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", required=True, help="folder for the mask and overlay PNGs")
    parser.add_argument("--threads", type=int, default=None, help="interpreter CPU threads")
    parser.add_argument(
        "--runs", type=int, default=1, help="timed invocations per image (median printed)"
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (RunnerError, OSError) as error:
        if args.debug:
            raise
        if isinstance(error, OSError) and error.filename:
            error = f"{error.filename}: {error.strerror or error}"
        print(f"run_tflite: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
