"""retrieve.wanted_by: what `restore --include` takes, over plain member names."""

from __future__ import annotations

import pytest

from backupagent.retrieve import wanted_by


@pytest.mark.parametrize(
    ("pattern", "name", "wanted"),
    [
        ("/var/www/html/wp-content/uploads", "files/var/www/html/wp-content/uploads", True),
        ("/var/www/html/wp-content/uploads", "files/var/www/html/wp-content/uploads/a/b.jpg", True),
        ("/var/www/html/wp-content/uploads/", "files/var/www/html/wp-content/uploads/x", True),
        ("/var/www/html/wp-content/uploads", "files/var/www/html/wp-content/uploads2/x", False),
        ("/var/www/html/wp-content/uploads", "files/var/www/html/wp-content", False),
        ("wp-content/uploads/2026/11", "files/srv/site/wp-content/uploads/2026/11/a.png", True),
        ("wp-content/uploads/2026/11", "files/srv/site/wp-content/uploads/2026/12/a.png", False),
        ("*/uploads/*.pdf", "files/srv/site/wp-content/uploads/2026/menu.pdf", True),
        ("*/uploads/*.pdf", "files/srv/site/wp-content/uploads/menu.txt", False),
        ("databases/wp.sql", "databases/wp.sql", True),
        ("databases/wp.sql", "databases/wp.sql.old", False),
        ("files/srv", "files/srv/a", True),
        ("index.php", "files/srv/index.php", True),
        ("index.php", "files/srv/index.php.bak", False),
    ],
)
def test_a_pattern_takes_the_name_or_a_directory_above_it(
    pattern: str, name: str, wanted: bool
) -> None:
    assert wanted_by([pattern])(name) is wanted


def test_several_patterns_and_a_hostile_depth() -> None:
    wanted = wanted_by(["databases/wp.sql", "/srv/site/uploads"])
    assert wanted("databases/wp.sql") and wanted("files/srv/site/uploads/x")
    assert not wanted("files/srv/site/index.php")
    deep = "files/srv/site/uploads" + "/a" * 500_000  # 1 MiB, half a million levels deep
    assert wanted(deep) and not wanted("files/srv/other" + "/a" * 500_000)
