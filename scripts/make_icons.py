"""Draw the app icon (assets/icon-*.png): the project makes its own artwork."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def icon(size: int) -> Image.Image:
    s = size
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    # rounded square with a vertical teal-to-indigo gradient
    gradient = Image.new("RGBA", (s, s))
    top, bottom = (32, 201, 151), (63, 81, 181)
    for y in range(s):
        t = y / (s - 1)
        gradient.paste(tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)) + (255,), (0, y, s, y + 1))
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, s - 1, s - 1), radius=s // 5, fill=255)
    img.paste(gradient, (0, 0), mask)
    d = ImageDraw.Draw(img)
    # a film frame with an eye: image and video in, words out
    m = s // 6
    d.rounded_rectangle((m, int(s * 0.27), s - m, int(s * 0.73)), radius=s // 16, outline=(255, 255, 255, 255),
                        width=max(2, s // 28))
    for i in range(5):
        x = m + (s - 2 * m) * (i + 0.5) / 5
        for y in (int(s * 0.31), int(s * 0.69)):
            d.ellipse((x - s / 70, y - s / 70, x + s / 70, y + s / 70), fill=(255, 255, 255, 230))
    cx, cy, r = s / 2, s / 2, s * 0.13
    d.ellipse((cx - 1.8 * r, cy - r, cx + 1.8 * r, cy + r), fill=(255, 255, 255, 255))
    d.ellipse((cx - r * 0.75, cy - r * 0.75, cx + r * 0.75, cy + r * 0.75), fill=(40, 60, 140, 255))
    d.ellipse((cx - r * 0.3, cy - r * 0.45, cx + r * 0.05, cy - r * 0.1), fill=(255, 255, 255, 220))
    shadow = img.filter(ImageFilter.GaussianBlur(max(1, s // 128)))
    return Image.alpha_composite(shadow, img)


def main():
    ASSETS.mkdir(exist_ok=True)
    for size in (64, 256, 512, 1024):
        icon(size).save(ASSETS / f"icon-{size}.png")
    icon(256).save(ASSETS / "icon.ico", sizes=[(16, 16), (32, 32), (64, 64), (128, 128), (256, 256)])


if __name__ == "__main__":
    main()
