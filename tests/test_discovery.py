"""[discover] wordpress: a job per site found, with the defaults; names from the
pattern's wildcards; a [jobs.NAME] adds to a found site."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupagent.config import ConfigError, load_config
from backupagent.discovery import job_name, wordpress_sites

WP_CONFIG = (
    "<?php\ndefine('DB_NAME', 'wp');\ndefine('DB_USER', 'wp');\n"
    "define('DB_PASSWORD', 'secret');\ndefine('DB_HOST', 'localhost');\n$table_prefix = 'wp_';\n"
)


def site(root: Path, wordpress: bool = True) -> Path:
    root.mkdir(parents=True)
    if wordpress:
        (root / "wp-config.php").write_text(WP_CONFIG)
    return root


@pytest.mark.parametrize(
    ("pattern", "root", "name"),
    [
        ("/var/www/*/", "/var/www/shop.example", "shop.example"),
        ("/var/www/*/htdocs", "/var/www/shop.example/htdocs", "shop.example"),
        ("/srv/*/sites/*", "/srv/acme/sites/blog", "acme-blog"),
        ("/var/www/html", "/var/www/html", "html"),
        ("/var/www/*", "/var/www/my site (old)", "my-site-old"),
        ("/var/www/*", "/var/www/_private", "site-_private"),
    ],
)
def test_job_names(pattern: str, root: str, name: str) -> None:
    assert job_name(pattern, Path(root)) == name


def test_sites_are_directories_with_wp_config(tmp_path: Path) -> None:
    site(tmp_path / "www" / "one")
    site(tmp_path / "www" / "two")
    site(tmp_path / "www" / "static", wordpress=False)
    (tmp_path / "www" / "file.txt").write_text("x")
    found = wordpress_sites(["www/*/"], tmp_path)  # relative to jobs.toml's directory
    assert found.sites == {"one": tmp_path / "www/one", "two": tmp_path / "www/two"}
    assert found.skipped == {}


JOBS = """
[discover]
wordpress = "{www}/*/"

[defaults]
destination = "offsite"
schedule = "0 3 * * *"
jitter = "30m"

[destinations.offsite]
type = "ftp"
host = "ftp.example.com"
"""


def test_found_sites_become_jobs_with_the_defaults(tmp_path: Path) -> None:
    www = tmp_path / "www"
    for name in ("alpha", "beta", "gamma"):
        site(www / name)
    path = tmp_path / "jobs.toml"
    path.write_text(JOBS.format(www=www) + "[jobs.beta]\npassive = false\n")
    config = load_config(path)
    assert sorted(config.jobs) == config.discovered == ["alpha", "beta", "gamma"]
    alpha, beta = config.jobs["alpha"], config.jobs["beta"]
    assert (alpha.wordpress, alpha.destination, alpha.schedule) == (
        www / "alpha",
        "offsite",
        "0 3 * * *",
    )
    assert (beta.wordpress, beta.passive) == (www / "beta", False)  # its table adds to it
    site(www / "delta")  # a new site: the next load (SIGHUP) has it
    assert "delta" in load_config(path).jobs


def test_a_found_site_without_what_it_needs_is_said_of_discover(tmp_path: Path) -> None:
    www = tmp_path / "www"
    site(www / "alpha")
    path = tmp_path / "jobs.toml"
    path.write_text(JOBS.format(www=www).replace('destination = "offsite"\n', ""))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        f"jobs.toml: [discover] wordpress: the site {www}/alpha (job 'alpha'): destination: "
        "required key is missing; set it in [defaults]"
    ]


def test_two_sites_with_one_name_are_skipped_and_the_others_run(tmp_path: Path) -> None:
    site(tmp_path / "a" / "blog")
    site(tmp_path / "b" / "blog")
    site(tmp_path / "b" / "shop")
    path = tmp_path / "jobs.toml"
    text = JOBS.format(www=tmp_path).replace(
        f'"{tmp_path}/*/"', f'["{tmp_path}/a/*", "{tmp_path}/b/*"]'
    )
    path.write_text(text)
    config = load_config(path)  # one tenant's directory name never stops the others
    assert sorted(config.jobs) == ["shop"]
    assert sorted(str(p) for p in config.skipped) == [
        f"jobs.toml: [discover] wordpress: the site {tmp_path}/{a}/blog is skipped: it and "
        f"{tmp_path}/{b}/blog would all be job 'blog' (the other sites run; make the pattern tell it "
        "apart, or give it a [jobs.NAME] of its own)"
        for a, b in (("a", "b"), ("b", "a"))
    ]
