"""Bench sites: a WordPress tree that looks like a real one, or the old synthetic one.

The real-looking site, per unit of scale: Debian's packaged WordPress core and its three
themes (`apt-get download`, `dpkg -x`, links resolved as the upstream tarball has them),
four copies of `wp-includes` as plugins, and an uploads tree of generated media as
WordPress leaves it: photos as JPEG (quality 82, WordPress's default) with the six
sizes it makes of each, PNG graphics with three sizes, PDFs and ZIPs. At scale 1 that
is about 600 MB in about 12,000 files, near the 592 MB and 12,968 files of the site
issue 18 measured. Sites are built once into `.cache/bench/` (seeded: the same bytes
every time) and copied from there.

The synthetic site (`--site synthetic`): 5,000 small PHP files and 300 MiB of random
bytes per unit of scale, what the benches used first.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import os
import random
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "bench"
VERSION = 1  # of the generator: a change makes new cached sites
PACKAGES = (
    "wordpress",
    "wordpress-theme-twentytwentyone",
    "wordpress-theme-twentytwentytwo",
    "wordpress-theme-twentytwentythree",
    "php-getid3",  # the packaged core links to these: they are part of upstream's tree
    "libphp-phpmailer",
)
PLUGINS = 4  # copies of wp-includes, per unit of scale
PHOTOS = 110  # per unit of scale
GRAPHICS = 150
PDFS = 30
ZIPS = 10
PHOTO_SIZE = (3200, 2400)
PHOTO_SIZES = (150, 300, 768, 1024, 1536, 2048)  # WordPress 6's intermediate sizes
GRAPHIC_SIZES = (150, 300, 768)
JPEG_QUALITY = 82

PHP = "<?php\n/** {n} */\nfunction wp_fn_{n}($a) {{ return apply_filters('x_{n}', $a . '{n}'); }}\n"
SMALL_FILES = 5000  # synthetic, per unit of scale
UPLOADS = 60  # synthetic: 5 MiB each, per unit


def make_site(root: Path, scale: int, kind: str = "wordpress") -> None:
    """Build the site `kind` ("wordpress" or "synthetic") at `scale` in `root`."""
    if kind == "synthetic":
        make_synthetic_site(root, scale)
        return
    cached = CACHE / f"site-v{VERSION}-x{scale}"
    if not cached.exists():
        building = cached.with_name(cached.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        make_wordpress_site(building, scale)
        building.rename(cached)
    subprocess.run(["cp", "-a", str(cached), str(root)], check=True)


def make_synthetic_site(root: Path, scale: int) -> None:
    """Small compressible files plus incompressible uploads, WordPress-shaped."""
    for i in range(SMALL_FILES * scale):
        folder = root / "wp-includes" / f"part{i % 60}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i}.php").write_text(PHP.format(n=i) * (10 + i % 40))
    uploads = root / "wp-content" / "uploads"
    uploads.mkdir(parents=True)
    for i in range(UPLOADS * scale):
        (uploads / f"photo{i}.jpg").write_bytes(os.urandom(5 << 20))


def debian_wordpress() -> Path:
    """Debian's WordPress packages, unpacked once under CACHE; their root."""
    root = CACHE / "debian-wordpress"
    if (root / "usr" / "share" / "wordpress" / "wp-settings.php").exists():
        return root
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def make_wordpress_site(root: Path, scale: int) -> None:
    """Core, themes, plugins and uploads, as a WordPress host holds them."""
    core = debian_wordpress() / "usr" / "share" / "wordpress"
    shutil.copytree(core, root, symlinks=False, ignore_dangling_symlinks=True)
    plugins = root / "wp-content" / "plugins"
    for i in range(PLUGINS * scale):
        shutil.copytree(
            core / "wp-includes",
            plugins / f"plugin-{i}",
            symlinks=False,
            ignore_dangling_symlinks=True,
        )
    rng = random.Random(18)
    uploads = root / "wp-content" / "uploads"
    texts = sorted(p for p in core.rglob("*.php") if p.is_file())
    for i in range(PHOTOS * scale):
        _photo(_month(uploads, i), f"photo-{i}", rng)
    for i in range(GRAPHICS * scale):
        _graphic(_month(uploads, i), f"graphic-{i}", rng)
    for i in range(PDFS * scale):
        _pdf(_month(uploads, i) / f"document-{i}.pdf", rng)
    for i in range(ZIPS * scale):
        _zip(_month(uploads, i) / f"download-{i}.zip", core, texts, rng)


def _month(uploads: Path, i: int) -> Path:
    folder = uploads / str(2020 + i % 5) / f"{1 + i % 12:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _picture(size: tuple[int, int], rng: random.Random, grain: float) -> Any:
    """Smooth colour fields with fine grain: compresses as a photo does, not as noise."""
    from PIL import Image

    w, h = size
    base = Image.frombytes("RGB", (16, 12), rng.randbytes(16 * 12 * 3))
    base = base.resize(size, Image.Resampling.BICUBIC)
    noise = Image.frombytes("L", (w // 2, h // 2), rng.randbytes((w // 2) * (h // 2)))
    noise = noise.resize(size, Image.Resampling.BILINEAR).convert("RGB")
    return Image.blend(base, noise, grain)


def _photo(folder: Path, name: str, rng: random.Random) -> None:
    """An uploaded photo and the sizes WordPress makes of it."""
    picture = _picture(PHOTO_SIZE, rng, 0.15)
    picture.save(folder / f"{name}.jpg", "JPEG", quality=JPEG_QUALITY)
    for edge in PHOTO_SIZES:
        small = picture.copy()
        small.thumbnail((edge, edge))
        small.save(folder / f"{name}-{small.width}x{small.height}.jpg", quality=JPEG_QUALITY)


def _graphic(folder: Path, name: str, rng: random.Random) -> None:
    """A PNG with flat areas and shapes (a logo, a chart, a screenshot) and its sizes."""
    from PIL import Image, ImageDraw

    w, h = rng.choice(((1200, 800), (800, 600), (1600, 900)))
    picture = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.randrange(20, 80)):
        x, y = rng.randrange(w), rng.randrange(h)
        box = (x, y, x + rng.randrange(10, w // 3), y + rng.randrange(10, h // 3))
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle(box, fill=colour)
        else:
            draw.ellipse(box, fill=colour)
        draw.text((x, y), f"label {rng.randrange(10**6)}", fill=(0, 0, 0))
    if rng.random() < 0.3:  # some are photos saved as PNG
        picture = Image.blend(picture, _picture((w, h), rng, 0.1), 0.5)
    picture.save(folder / f"{name}.png", optimize=False)
    for edge in GRAPHIC_SIZES:
        small = picture.copy()
        small.thumbnail((edge, edge))
        small.save(folder / f"{name}-{small.width}x{small.height}.png")


def _pdf(path: Path, rng: random.Random) -> None:
    """A PDF of a few scanned pages (JPEG inside, as most uploaded PDFs are)."""
    pages = [_picture((1240, 1754), rng, 0.08) for _ in range(rng.randrange(1, 4))]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:], quality=75)
    path.write_bytes(buffer.getvalue())


def _zip(path: Path, core: Path, texts: list[Path], rng: random.Random) -> None:
    """A plugin or theme download: deflated PHP."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for text in rng.sample(texts, 150):
            archive.write(text, f"package/{text.relative_to(core)}")


# --- the database: WordPress's own schema, filled as a busy blog fills it -------------

POSTS = 20_000  # per unit of scale
CHARSET = "DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci"
SCHEMA_STRINGS = ("blog_tables", "users_single_table", "usermeta_table")


def wordpress_schema() -> str:
    """The CREATE TABLE statements of the packaged WordPress's wp-admin/includes/schema.php
    (its single-site tables), with the table prefix `wp_` as its installer sets them."""
    source = (debian_wordpress() / "usr/share/wordpress/wp-admin/includes/schema.php").read_text()
    statements = []
    for name in SCHEMA_STRINGS:
        start = source.index(f'${name} = "') + len(name) + 5
        statements.append(source[start : source.index('";', start)])
    sql = "".join(statements).replace("\\n", "\n")
    sql = re.sub(r"\$wpdb->(\w+)", r"wp_\1", sql)
    return sql.replace("$charset_collate", CHARSET).replace("$max_index_length", "191")


def wordpress_sql(scale: int) -> Path:
    """An SQL file that creates WordPress's tables and fills them (built once, cached):
    POSTS posts per unit of scale with revisions, post meta, comments, terms, options
    and users. Text is words drawn with a Zipf-like law, so it compresses as prose does."""
    path = CACHE / f"wordpress-v{VERSION}-x{scale}.sql"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1818)
    vocabulary = [
        "".join(rng.choices("etaoinshrdlucmfwypvbgkjqxz", k=rng.randint(2, 11)))
        for _ in range(6000)
    ]
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocabulary))))

    def words(count: int) -> str:
        return " ".join(rng.choices(vocabulary, cum_weights=weights, k=count))

    def post_content() -> str:
        blocks = []
        for _ in range(rng.randint(3, 12)):
            blocks.append(
                f"<!-- wp:paragraph -->\n<p>{words(rng.randint(20, 90))}</p>\n"
                "<!-- /wp:paragraph -->"
            )
        return "\n\n".join(blocks)

    building = path.with_suffix(".building")
    with building.open("w") as out:
        out.write(wordpress_schema())
        out.write("\n")
        rows = _Rows(out)
        rows.table("wp_users", "user_login,user_pass,user_nicename,user_email,display_name")
        for user in range(1, 21):
            rows.add(
                (
                    f"author{user}",
                    "$P$B" + "x" * 30,
                    f"author{user}",
                    f"author{user}@example.org",
                    f"Author {user}",
                )
            )
        rows.table("wp_options", "option_name,option_value,autoload")
        for option in range(400):
            value = "a:3:{" + words(rng.randint(5, 200)) + "}"
            rows.add((f"option_{option}", value, "yes" if option % 3 else "no"))
        rows.table("wp_terms", "name,slug")
        for term in range(1, 201):
            rows.add((f"Topic {term}", f"topic-{term}"))
        rows.table("wp_term_taxonomy", "term_id,taxonomy,description,count")
        for term in range(1, 201):
            rows.add((term, "category" if term <= 40 else "post_tag", words(10), 0))
        posts = POSTS * scale
        post_id = 0
        stamp = dt.datetime(2019, 1, 1)
        for number in range(posts):
            when = (stamp + dt.timedelta(minutes=137 * number)).strftime("%Y-%m-%d %H:%M:%S")
            title = words(rng.randint(3, 9)).title()
            content = post_content()
            post_id += 1
            rows.table(
                "wp_posts",
                "ID,post_author,post_date,post_date_gmt,post_content,post_title,post_excerpt,"
                "post_status,post_name,to_ping,pinged,post_modified,post_modified_gmt,"
                "post_content_filtered,post_parent,guid,post_type,comment_count",
            )
            rows.add(
                (
                    post_id,
                    rng.randint(1, 20),
                    when,
                    when,
                    content,
                    title,
                    "",
                    "publish",
                    f"post-{number}",
                    "",
                    "",
                    when,
                    when,
                    "",
                    0,
                    f"https://example.org/?p={post_id}",
                    "post",
                    2,
                )
            )
            parent = post_id
            if number % 2 == 0:  # a revision: the content before the last edit
                post_id += 1
                rows.add(
                    (
                        post_id,
                        rng.randint(1, 20),
                        when,
                        when,
                        content[: len(content) // 2],
                        title,
                        "",
                        "inherit",
                        f"{parent}-revision-v1",
                        "",
                        "",
                        when,
                        when,
                        "",
                        parent,
                        f"https://example.org/?p={post_id}",
                        "revision",
                        0,
                    )
                )
            rows.table("wp_postmeta", "post_id,meta_key,meta_value")
            for key in (
                "_edit_lock",
                "_edit_last",
                "_thumbnail_id",
                "_wp_page_template",
                "_yoast_wpseo_metadesc",
                "_yoast_wpseo_focuskw",
                "views",
                "_wp_old_slug",
            ):
                rows.add((parent, key, words(rng.randint(1, 25))))
            rows.table("wp_term_relationships", "object_id,term_taxonomy_id")
            for term in rng.sample(range(1, 201), 3):
                rows.add((parent, term))
            rows.table(
                "wp_comments",
                "comment_post_ID,comment_author,comment_author_email,comment_date,"
                "comment_date_gmt,comment_content,comment_agent",
            )
            for _ in range(2):
                rows.add(
                    (
                        parent,
                        f"Reader {rng.randint(1, 5000)}",
                        "reader@example.net",
                        when,
                        when,
                        words(rng.randint(8, 60)),
                        "Mozilla/5.0 (X11; Linux x86_64)",
                    )
                )
        rows.close()
    building.rename(path)
    return path


class _Rows:
    """Multi-row INSERTs of about 1 MiB per table, as mariadb-dump writes them."""

    LIMIT = 1 << 20

    def __init__(self, out: io.TextIOBase) -> None:
        self.out = out
        self.name = ""
        self.columns: dict[str, str] = {}
        self.pending: dict[str, list[str]] = {}
        self.size: dict[str, int] = {}

    def table(self, name: str, columns: str) -> None:
        """Rows added next go to `name`."""
        self.name = name
        self.columns.setdefault(name, columns)
        self.pending.setdefault(name, [])
        self.size.setdefault(name, 0)

    def add(self, values: tuple[object, ...]) -> None:
        row = "(" + ",".join(_literal(v) for v in values) + ")"
        self.pending[self.name].append(row)
        self.size[self.name] += len(row)
        if self.size[self.name] >= self.LIMIT:
            self._flush(self.name)

    def _flush(self, name: str) -> None:
        if self.pending[name]:
            rows = ",".join(self.pending[name])
            self.out.write(f"INSERT INTO {name} ({self.columns[name]}) VALUES {rows};\n")
        self.pending[name], self.size[name] = [], 0

    def close(self) -> None:
        for name in self.pending:
            self._flush(name)


def _literal(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"
