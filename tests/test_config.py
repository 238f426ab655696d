"""jobs.toml validation: every problem reported with its table and key, all at once."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from backupagent.config import (
    AGE_EXAMPLE_KEY,
    WORDPRESS_EXCLUDES,
    ConfigError,
    config_warnings,
    load_config,
    placeholder,
)

BASE = """
[destinations.offsite]
type = "ftp"
host = "ftp.example.com"
{dest}

[jobs.nightly]
schedule = "0 3 * * *"
destination = "offsite"
sources = ["/var/www/html"]
{job}
"""

TWO = '[jobs.two]\ndestination = "offsite"\n{}\n'


def _load(tmp_path: Path, dest: str = "", job: str = "", extra: str = ""):
    path = tmp_path / "jobs.toml"
    path.write_text(BASE.format(dest=dest, job=job) + extra)
    return load_config(path)


def _problems(tmp_path: Path, **parts: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, **parts)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (
            {"job": 'jitter = "soon"'},
            "jobs.toml: [jobs.nightly] jitter: 'soon' is not a duration",
        ),
        (
            {"job": 'passive = "yes"'},
            "jobs.toml: [jobs.nightly] passive: Input should be a valid boolean",
        ),
        (
            {"job": "pasive = true"},
            "jobs.toml: [jobs.nightly] pasive: unknown key; did you mean 'passive'?",
        ),
        (  # a destination's key in a job: said so, not the nearest job key ('require')
            {"job": "retires = 3"},
            "jobs.toml: [jobs.nightly] retires: unknown key; did you mean 'retries' "
            "(a key of [destinations.*])?",
        ),
        (
            {"job": "keep = 3"},
            "jobs.toml: [jobs.nightly] keep: unknown key: 'keep' is a key of "
            "[destinations.*], not of this table",
        ),
        (
            {"dest": "full_every = 7"},
            "jobs.toml: [destinations.offsite] full_every: unknown key: 'full_every' is a key "
            "of [jobs.*], not of this table",
        ),
        (
            {"dest": 'keep_within = "30 days"'},
            "jobs.toml: [destinations.offsite] keep_within: '30 days' is not a span (write "
            'e.g. "30d", "8w", "1y" or "36h")',
        ),
        (
            {"dest": 'hots = "x"'},
            "jobs.toml: [destinations.offsite] hots: unknown key; did you mean 'host'?",
        ),
        (
            {"extra": TWO.format('schedule = "61 3 * * *"\nsources = ["/srv"]')},
            "jobs.toml: [jobs.two] schedule: '61 3 * * *' is not a valid cron",
        ),
        (
            {"job": 'drill_schedule = "61 3 * * *"'},
            "jobs.toml: [jobs.nightly] drill_schedule: '61 3 * * *' is not a valid cron",
        ),
        (
            {"job": 'drill_server = "remote"'},
            "jobs.toml: [jobs.nightly] drill_server: Input should be 'configured' or 'local'",
        ),
        (
            {
                "job": 'drill_schedule = "0 5 * * 0"\n'
                'encrypt_to = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]'
            },
            "jobs.toml: [jobs.nightly] drill_identity: the job's backups are encrypted: a "
            "scheduled drill reads them with the private key in drill_identity",
        ),
        (
            {"extra": TWO.format('schedule = "0 3 * *"\nsources = ["/srv"]')},
            "jobs.toml: [jobs.two] schedule: '0 3 * *' is not a cron expression of 5 fields",
        ),
        (
            {"extra": TWO.format('sources = ["relative/dir"]')},
            "jobs.toml: [jobs.two] sources: 'relative/dir' is not an absolute path",
        ),
        (
            {"extra": TWO.format("sources = []")},
            "jobs.toml: [jobs.two] sources: nothing to back up: give sources, databases or wordpress",
        ),
        (
            {"dest": "port = 70000"},
            "jobs.toml: [destinations.offsite] port: Input should be less than or equal to 65535",
        ),
        (
            {"dest": 'tls = "maybe"'},
            "jobs.toml: [destinations.offsite] tls: Input should be 'none', 'explicit' or 'implicit'",
        ),
        (
            {"dest": "keep = 0"},
            "jobs.toml: [destinations.offsite] keep: Input should be greater than or equal to 1",
        ),
        (
            {"dest": 'password_file = "/nonexistent/offsite.pass"'},
            "jobs.toml: [destinations.offsite] password_file: cannot read /nonexistent/offsite.pass: No such file or directory",
        ),
        (
            {"dest": 'password_env = "BACKUPAGENT_TEST_UNSET_VAR"'},
            "jobs.toml: [destinations.offsite] password_env: environment variable BACKUPAGENT_TEST_UNSET_VAR is not set",
        ),
        (
            {"dest": 'password = "a"\npassword_env = "HOME"'},
            "jobs.toml: [destinations.offsite] password_env: give only one of password, password_env",
        ),
        (
            {"extra": '[jobs.other]\ndestination = "nowhere"\nsources = ["/srv"]\n'},
            "jobs.toml: [jobs.other] destination: no [destinations.nowhere] table (destinations: offsite)",
        ),
        (
            {"extra": '[jobs.other]\nsources = ["/srv"]\n'},
            "jobs.toml: [jobs.other] destination: required key is missing",
        ),
        (
            {"job": 'volume_size = "64 megs"'},
            "jobs.toml: [jobs.nightly] volume_size: '64 megs' is not a size (write e.g. 64M",
        ),
        (
            {"job": 'volume_size = "1K"'},
            "jobs.toml: [jobs.nightly] volume_size: Input should be greater than or equal to 65536",
        ),
        ({"extra": "[agnet]\n"}, "jobs.toml: agnet: unknown key; did you mean 'agent'?"),
        (
            {"extra": '[destinations.x]\ntype = "webdav"\n'},
            'jobs.toml: [destinations.x] type: must be one of "ftp", "sftp", "local"',
        ),
        (
            {
                "extra": '[destinations.x]\ntype = "sftp"\nhost = "h"\nuser = "u"\nhost_key = "ab:cd"\n'
            },
            "jobs.toml: [destinations.x] host_key: must be a key fingerprint as `ssh-keygen -l",
        ),
        (
            {
                "extra": '[destinations.x]\ntype = "sftp"\nhost = "h"\nuser = "u"\nkey_file = "/nonexistent/key"\n'
            },
            "jobs.toml: [destinations.x] key_file: no such file: /nonexistent/key",
        ),
        (
            {"extra": '[destinations.x]\ntype = "local"\npath = "relative"\n'},
            "jobs.toml: [destinations.x] path: 'relative' is not an absolute path",
        ),
        (
            {
                "extra": '[jobs.other]\ndestination = "offsite"\ndestinations = ["offsite"]\nsources = ["/srv"]\n'
            },
            "jobs.toml: [jobs.other] destinations: give destination or destinations, not both",
        ),
        (
            {"extra": '[jobs.other]\ndestinations = ["offsite", "nowhere"]\nsources = ["/srv"]\n'},
            "jobs.toml: [jobs.other] destinations: no [destinations.nowhere] table",
        ),
        (
            {"extra": '[jobs.other]\ndestinations = ["offsite", "offsite"]\nsources = ["/srv"]\n'},
            "jobs.toml: [jobs.other] destinations[1]: 'offsite' is named twice",
        ),
        (
            {
                "extra": '[destinations.nas]\ntype = "local"\npath = "/mnt/nas"\n'
                'encrypt_to = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]\n'
                '[jobs.other]\ndestinations = ["offsite", "nas"]\nsources = ["/srv"]\n'
            },
            "jobs.toml: [jobs.other] encrypt_to: its destinations name different recipients",
        ),
        (
            {"extra": '["jobs"."bad name"]\ndestination = "offsite"\nsources = ["/srv"]\n'},
            "jobs.toml: [jobs.bad name]: the name may use only letters",
        ),
    ],
)
def test_each_problem_names_table_and_key(
    tmp_path: Path, parts: dict[str, str], expected: str
) -> None:
    problems = _problems(tmp_path, **parts)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("text", "size"),
    [('"64M"', 64 << 20), ('"1G"', 1 << 30), ('"512k"', 512 << 10), ("100000", 100000)],
)
def test_volume_size_units(tmp_path: Path, text: str, size: int) -> None:
    assert _load(tmp_path, job=f"volume_size = {text}").jobs["nightly"].volume_size == size


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, dest='port = "21"\ntimeout = -1', job='passive = 1\nexclude = "*.log"'
    )
    keys = sorted(p.split("] ", 1)[1].split(":")[0] for p in problems)
    assert keys == ["exclude", "passive", "port", "timeout"], problems


def test_invalid_toml_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text("[jobs.nightly\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value.problems[0]).startswith("jobs.toml: not valid TOML:")


@pytest.mark.parametrize(
    ("dest", "job", "passive"),
    [
        ("", "", True),
        ("passive = false", "", False),
        ("passive = false", "passive = true", True),
        ("", "passive = false", False),
    ],
)
def test_job_passive_overrides_destination(
    tmp_path: Path, dest: str, job: str, passive: bool
) -> None:
    assert _load(tmp_path, dest=dest, job=job).passive_for("nightly") is passive


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pass"
    secret.write_text("s3cret\n")
    assert (
        _load(tmp_path, dest=f'password_file = "{secret}"')
        .destination_of("nightly")
        .read_password()
        == "s3cret"
    )
    monkeypatch.setenv("BA_PASS", "from-env")
    assert (
        _load(tmp_path, dest='password_env = "BA_PASS"').destination_of("nightly").read_password()
        == "from-env"
    )
    config = _load(tmp_path, dest='password = "inline"')
    assert "inline" not in repr(config)


def test_defaults_and_implicit_tls_port(tmp_path: Path) -> None:
    config = _load(tmp_path)
    dest = config.destinations["offsite"]
    assert (dest.effective_port, dest.timeout, dest.keep, dest.tls) == (21, 30.0, 14, "none")
    assert config.agent.state_dir == Path("/var/lib/backupagent")
    assert _load(tmp_path, dest='tls = "implicit"').destinations["offsite"].effective_port == 990


def test_example_file_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """jobs.example.toml documents every key; it must load once its password file exists."""
    example = Path(__file__).parent.parent / "backupagent" / "share" / "jobs.example.toml"
    text = example.read_text()
    secret = tmp_path / "offsite.pass"
    secret.write_text("x\n")
    path = tmp_path / "jobs.toml"
    path.write_text(re.sub(r"/etc/backupagent/[\w-]+\.pass", str(secret), text))
    config = load_config(path)
    assert set(config.jobs) == {"nightly", "blog"}
    assert config.jobs["blog"].wordpress_exclude == WORDPRESS_EXCLUDES
    # inert: what a first backup needs is live, every optional feature commented out
    assert config.agent.email is None and config.agent.timezone is None
    assert config.agent.metrics_file is None
    for name, job in config.jobs.items():
        assert job.ping is None and job.email is None and not job.databases
        assert not config.recipients_for(name) and job.verify_schedule is None
    # and `check` says which example values are still in
    placeholders = [str(w) for w in config_warnings(config) if "for examples" in w.message]
    assert placeholders and "[destinations.offsite] host" in placeholders[0]


PLACEHOLDERS = [
    (AGE_EXAMPLE_KEY, "age's README"),
    ("https://hc-ping.com/your-uuid", "your-uuid"),
    ("ftp.example.com", "example.com"),
    ("ops@example.org", "example.com/.org"),
    ("https://example.net:8443/ping", "example.com/.org/.net"),
    ("backup.example.com.au", None),  # a real domain that only starts so
    ("myexample.com", None),
    ("ftp.host.de", None),
    ("age1realkeyrealkey", None),
]


@pytest.mark.parametrize(("value", "said"), PLACEHOLDERS)
def test_placeholders_from_examples_are_recognised(value: str, said: str | None) -> None:
    why = placeholder(value)
    assert (why is None) if said is None else (why is not None and said in why)


def test_check_warns_about_each_placeholder_in_use(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    secret.chmod(0o600)
    path = tmp_path / "jobs.toml"
    path.write_text(f"""
[agent.email]
to = ["ops@example.org"]
[destinations.offsite]
type = "ftp"
host = "ftp.example.com"
password_file = "{secret}"
[jobs.nightly]
destination = "offsite"
sources = ["{tmp_path}"]
encrypt_to = ["{AGE_EXAMPLE_KEY}"]
[jobs.nightly.ping]
url = "https://hc-ping.com/your-uuid"
""")
    found = {(w.table, w.key) for w in config_warnings(load_config(path))}
    assert found >= {
        ("agent.email", "to"),
        ("destinations.offsite", "host"),
        ("jobs.nightly", "encrypt_to"),
        ("jobs.nightly.ping", "url"),
    }


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('{ type = "mysql" }', "[jobs.two] databases[0].name: required key is missing"),
        (
            '{ type = "mysql", name = "wp", port = "x" }',
            "[jobs.two] databases[0].port: Input should be a valid integer",
        ),
        (
            '{ type = "mysql", name = "wp", pasword = "x" }',
            "[jobs.two] databases[0].pasword: unknown key; did you mean 'password'?",
        ),
        (
            '{ type = "oracle", name = "wp" }',
            "[jobs.two] databases[0]: Input tag 'oracle' found using 'type' does not match",
        ),
        (
            '{ type = "sqlite", path = "rel.db" }',
            "[jobs.two] databases[0].path: 'rel.db' is not an absolute path",
        ),
        (
            '{ type = "postgresql", name = "app", password_file = "/nonexistent/pg.pass" }',
            "[jobs.two] databases[0].password_file: cannot read /nonexistent/pg.pass",
        ),
    ],
)
def test_database_entries_are_validated(tmp_path: Path, entry: str, expected: str) -> None:
    problems = _problems(tmp_path, extra=TWO.format(f"databases = [{entry}]"))
    assert any(p.startswith(f"jobs.toml: {expected}") for p in problems), problems


def test_duplicate_dump_names_are_rejected(tmp_path: Path) -> None:
    entries = '{ type = "mysql", name = "wp" }, { type = "postgresql", name = "wp" }'
    problems = _problems(tmp_path, extra=TWO.format(f"databases = [{entries}]"))
    assert problems == ["jobs.toml: [jobs.two] databases[1].name: 'wp' is dumped twice in this job"]


def test_wordpress_job_needs_no_sources(tmp_path: Path) -> None:
    config = _load(tmp_path, extra=TWO.format('wordpress = "/var/www/html"'))
    job = config.jobs["two"]
    assert job.sources == [] and "wp-content/cache/" in job.wordpress_exclude
    assert job.wordpress_tables == "all"


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        # 2026-11-22 is a Sunday; crontab counts 0 and 7 as Sunday (APScheduler 3 does not)
        ("0 3 * * 0", "2026-11-22T00:00", "2026-11-22T03:00"),
        ("0 3 * * 7", "2026-11-22T00:00", "2026-11-22T03:00"),
        ("0 3 * * 1-5", "2026-11-22T00:00", "2026-11-23T03:00"),
        ("0 3 * * sat", "2026-11-22T00:00", "2026-11-28T03:00"),
        ("0 3 * * 5-7", "2026-11-22T04:00", "2026-11-27T03:00"),
        ("30 2 1 * *", "2026-11-22T00:00", "2026-12-01T02:30"),
        ("*/20 * * * * *", "2026-11-22T00:00:01", "2026-11-22T00:00:20"),
    ],
)
def test_schedules_follow_crontab(schedule: str, after: str, expected: str) -> None:
    import datetime as dt

    from backupagent.config import cron_trigger

    utc = dt.UTC
    start = dt.datetime.fromisoformat(after).replace(tzinfo=utc)
    fire = cron_trigger(schedule, "UTC").get_next_fire_time(None, start)
    assert fire == dt.datetime.fromisoformat(expected).replace(tzinfo=utc)


@pytest.mark.parametrize(
    ("dest", "job", "expected"),
    [
        (
            'directory = "/x\\r\\nDELE y"',
            "",
            "[destinations.offsite] directory: contains a control character (\\x0d); remove it",
        ),
        (
            "",
            'exclude = ["ok", "bad\\u001b[2J"]',
            "[jobs.nightly] exclude[1]: contains a control character (\\x1b); remove it",
        ),
        (
            'user = "back\\tup"',
            "",
            "[destinations.offsite] user: contains a control character (\\x09); remove it",
        ),
    ],
)
def test_control_characters_in_values_are_refused(
    tmp_path: Path, dest: str, job: str, expected: str
) -> None:
    problems = _problems(tmp_path, dest=dest, job=job)
    assert [p.removeprefix("jobs.toml: ") for p in problems] == [expected]


def test_a_job_name_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, extra='[jobs."two\\n"]\ndestination = "offsite"\nsources = ["/x"]\n'
    )
    assert any("the name may use only letters" in p for p in problems)


def test_a_wrongly_typed_secret_is_not_echoed(tmp_path: Path) -> None:
    problems = _problems(tmp_path, dest="password = 123456789")
    assert problems and not any("123456789" in p for p in problems)
    assert any("[destinations.offsite] password:" in p for p in problems)


def test_a_password_file_others_may_read_is_a_warning(tmp_path: Path) -> None:
    from backupagent.config import config_warnings

    secret = tmp_path / "ftp.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    config = _load(tmp_path, dest=f'password_file = "{secret}"')
    modes = [str(w) for w in config_warnings(config) if w.key == "password_file"]
    assert modes == [
        f"jobs.toml: [destinations.offsite] password_file: {secret} may be read by others "
        f"(mode 644): chmod 600 {secret}"
    ]
    secret.chmod(0o600)
    assert [w.key for w in config_warnings(config)] == ["host"]  # ftp.example.com, BASE's


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("30d", dt.timedelta(days=30)),
        ("1y6w", dt.timedelta(days=365 + 42)),
        ("36h", dt.timedelta(hours=36)),
    ],
)
def test_keep_within_spans(tmp_path: Path, text: str, span: dt.timedelta) -> None:
    config = _load(tmp_path, dest=f'keep_within = "{text}"\nkeep_yearly = 3')
    assert config.destinations["offsite"].keep_within == span
    assert config.destinations["offsite"].keep_yearly == 3


def test_a_jobs_toml_others_may_read_holding_a_password_is_a_warning(tmp_path: Path) -> None:
    config = _load(tmp_path, dest='password = "inline-secret"')
    config.path.chmod(0o644)
    (found,) = [w for w in config_warnings(config) if w.key == "password"]
    assert found.table == "destinations.offsite"
    assert "holds this password inline and may be read by others (mode 644)" in found.message
    assert "inline-secret" not in str(found)
    config.path.chmod(0o600)
    assert [w.key for w in config_warnings(config)] == ["host"]


# --- [agent] include and [defaults] ----------------------------------------------------

MAIN = """
[agent]
include = ["jobs.d/*.toml"]

[defaults]
destination = "offsite"
schedule = "0 3 * * *"
exclude = ["*.log"]
passive = false

[destinations.offsite]
type = "ftp"
host = "ftp.example.com"
"""


def _site(directory: Path, name: str, extra: str = "") -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.toml").write_text(f'[jobs.{name}]\nsources = ["/srv/{name}"]\n{extra}')


def test_included_jobs_take_the_defaults_and_keep_their_own_keys(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(MAIN + '[jobs.main]\nsources = ["/srv/main"]\npassive = true\n')
    _site(tmp_path / "jobs.d", "blog")
    _site(tmp_path / "jobs.d", "shop", 'schedule = "30 4 * * *"\nexclude = []\n')
    (tmp_path / "jobs.d" / "notes.txt").write_text("not toml")  # not matched
    config = load_config(path)
    assert sorted(config.jobs) == ["blog", "main", "shop"]
    blog, shop, main = config.jobs["blog"], config.jobs["shop"], config.jobs["main"]
    assert (blog.destination, blog.schedule, blog.exclude, blog.passive) == (
        "offsite",
        "0 3 * * *",
        ["*.log"],
        False,
    )
    assert (shop.schedule, shop.exclude) == ("30 4 * * *", [])  # a job's own key wins whole
    assert main.passive is True
    assert config.file_of("jobs.blog") == tmp_path / "jobs.d" / "blog.toml"
    assert config.file_of("jobs.main") == path
    assert config.label_of("jobs.shop") == "jobs.d/shop.toml"


def test_problems_name_the_file_the_table_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(MAIN.replace("passive = false", 'passive = "no"\ncompress = 3'))
    _site(tmp_path / "jobs.d", "blog", "exclud = []\n")
    _site(tmp_path / "jobs.d", "shop", '[destinations.offsite]\ntype = "local"\npath = "/x"\n')
    (tmp_path / "jobs.d" / "bad.toml").write_text('[agent]\nstate_dir = "/tmp"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = [str(p) for p in info.value.problems]
    assert "jobs.d/blog.toml: [jobs.blog] exclud: unknown key; did you mean 'exclude'?" in lines
    assert any(line.startswith("jobs.toml: [defaults] compress: unknown key") for line in lines)
    # a default's error is reported once, against [defaults], not once per job
    passive = [line for line in lines if "passive" in line]
    assert passive == ["jobs.toml: [defaults] passive: Input should be a valid boolean (got 'no')"]
    assert "jobs.d/shop.toml: [destinations.offsite]: already defined in jobs.toml" in lines
    assert any(line.startswith("jobs.d/bad.toml: agent: unknown key") for line in lines)


def test_advice_names_the_included_file(tmp_path: Path) -> None:
    from backupagent.diagnosis import Category, Diagnosis, suggestion_text

    path = tmp_path / "jobs.toml"
    path.write_text(MAIN)
    _site(tmp_path / "jobs.d", "blog")
    config = load_config(path)
    flip = Diagnosis(Category.PASSIVE_DATA, "the data connection failed", ("x",), "", True)
    text = suggestion_text(
        flip,
        "blog",
        "offsite",
        config.path,
        None,
        config.mode_table("blog", "offsite"),
        config.files,
    )
    assert f"Change: in {tmp_path}/jobs.d/blog.toml, under [jobs.blog], set passive = true" in text
