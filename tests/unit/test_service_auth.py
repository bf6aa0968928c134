"""Who may call the service: the bearer token (compare, load, generate, save) and the Host check."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from supervisor.service.auth import (
    MIN_TOKEN_LENGTH,
    TOKEN_VARIABLE,
    HostPolicy,
    Token,
    TokenError,
    is_loopback,
    load_token,
    new_token,
    save_token,
)

SECRET = "s3cret-Token_0123456789"
TOKEN = Token(SECRET.encode("ascii"), "test")
OTHER_UID = 65534  # nobody

#: Any str aiohttp could hand over, lone surrogates included (it decodes with surrogateescape).
any_text = st.text(st.characters(exclude_categories=()))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def is_exact(header: str) -> bool:
    """What should pass: "Bearer" in any case, one or more spaces, our token, then at most
    the spaces and tabs HTTP allows around a field value (aiohttp strips those anyway)."""
    scheme, _, rest = header.partition(" ")
    return scheme.lower() == "bearer" and rest.lstrip(" ").rstrip(" \t") == SECRET


# -- Token.matches ------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_matches_accepts_bearer_and_the_token_in_any_scheme_case(scheme: str) -> None:
    assert TOKEN.matches(f"{scheme} {SECRET}") is True


def test_matches_allows_the_spaces_http_allows() -> None:
    assert TOKEN.matches(f"Bearer   {SECRET}") is True  # RFC 6750: "Bearer" 1*SP b64token
    assert TOKEN.matches(f"Bearer {SECRET} \t") is True  # OWS after a field value


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        SECRET,
        f"Basic {SECRET}",
        f"Bearer: {SECRET}",
        f"Bearer\t{SECRET}",
        f"Bearer {SECRET.upper()}",
        "Bearer wrong-token-0123456789",
        f"Bearer {SECRET[:-1]}",
        f"Bearer {SECRET[1:]}",
        f"Bearer {SECRET}x",
        f"Bearer x{SECRET}",
        f"Bearer {SECRET}{SECRET}",
        f"Bearer {SECRET} {SECRET}",
        f"Bearer {SECRET}\x00",
        f"Bearer {SECRET}é",
        f"Bearer \udcff{SECRET}",
        f"Bearer {SECRET}\udcff",
        f"Bearer {SECRET}" + chr(0xD800),  # a surrogate surrogateescape cannot encode
    ],
)
def test_matches_refuses_anything_else(header: str | None) -> None:
    assert TOKEN.matches(header) is False


@pytest.mark.parametrize("tail", [b"\xc2\xa0", b"\xc2\x85", b"\xe3\x80\x80"], ids=["NBSP", "NEL", "ideographic-space"])
def test_matches_refuses_the_token_followed_by_non_ascii_bytes(tail: bytes) -> None:
    # Bytes >= 0x80 are legal in a field value (obs-text) and aiohttp strips only SP and HTAB;
    # these decode to Unicode whitespace, so the bytes sent are not "Bearer <token>".
    header = (b"Bearer " + SECRET.encode() + tail).decode("utf-8", "surrogateescape")
    assert TOKEN.matches(header) is False


@given(header=any_text)
@example(header="Bearer \udcff\udcfe")
def test_matches_never_raises_and_refuses_arbitrary_text(header: str) -> None:
    assert TOKEN.matches(header) is is_exact(header)


@settings(derandomize=True)  # the same examples every run: a failure here is never a fluke
@given(before=any_text, after=any_text)
def test_matches_accepts_the_token_only_in_the_exact_form(before: str, after: str) -> None:
    header = before + SECRET + after
    assert TOKEN.matches(header) is is_exact(header)


# -- load_token ---------------------------------------------------------------------
def write(path: Path, text: str | bytes, file_mode: int = 0o600) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    path.chmod(file_mode)
    return path


def test_no_source_gives_none() -> None:
    assert load_token(None, {}) is None


def test_the_variable_wins_over_the_token_file(tmp_path: Path) -> None:
    token_file = write(tmp_path / "token", "file-token-0123456789\n")
    token = load_token(token_file, {TOKEN_VARIABLE: f"  {SECRET}\n"})
    assert token == Token(SECRET.encode(), TOKEN_VARIABLE, None)
    # the file is not even read: a missing one does not matter
    assert load_token(tmp_path / "missing", {TOKEN_VARIABLE: SECRET}) == token


def test_a_token_file_is_read_and_stripped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token_file = write(tmp_path / "token", f"\n {SECRET}\r\n")
    with caplog.at_level(logging.WARNING, logger="supervisor.service"):
        token = load_token(token_file, {})
    assert token == Token(SECRET.encode(), f"--token-file {token_file}", token_file)
    assert caplog.records == []


@pytest.mark.parametrize("file_mode", [0o640, 0o604, 0o644])
def test_a_token_file_others_can_read_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, file_mode: int
) -> None:
    token_file = write(tmp_path / "token", SECRET, file_mode)
    with caplog.at_level(logging.WARNING, logger="supervisor.service"):
        token = load_token(token_file, {})
    assert token is not None and token.value == SECRET.encode()
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert str(token_file) in record.getMessage() and f"{file_mode:o}" in record.getMessage()


BAD_TOKENS = {
    "empty": "",
    "blank": " \n",
    "short": "x" * (MIN_TOKEN_LENGTH - 1),
    "space": "abcdefgh ijklmnopq",
    "tab": "abcdefgh\tijklmnopq",
    "non-ascii": "tökén-0123456789abc",
    "control": "abcdefgh\x7fijklmnopq",
}


@pytest.mark.parametrize("text", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_bad_token_in_the_variable_names_the_variable(text: str) -> None:
    with pytest.raises(TokenError) as caught:
        load_token(None, {TOKEN_VARIABLE: text})
    assert str(caught.value).startswith(f"{TOKEN_VARIABLE}: ")


@pytest.mark.parametrize("text", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_a_bad_token_in_the_file_names_the_file(tmp_path: Path, text: str) -> None:
    token_file = write(tmp_path / "token", text)
    with pytest.raises(TokenError) as caught:
        load_token(token_file, {})
    assert str(caught.value).startswith(f"--token-file {token_file}: ")


def test_the_shortest_token_allowed(tmp_path: Path) -> None:
    exact = "k" * MIN_TOKEN_LENGTH
    assert load_token(None, {TOKEN_VARIABLE: exact}) == Token(exact.encode(), TOKEN_VARIABLE)
    with pytest.raises(TokenError, match=f"at least {MIN_TOKEN_LENGTH} characters, got {MIN_TOKEN_LENGTH - 1}"):
        load_token(None, {TOKEN_VARIABLE: exact[1:]})


@pytest.mark.parametrize("kind", ["missing", "folder", "not-utf8"])
def test_an_unreadable_token_file_names_the_file(tmp_path: Path, kind: str) -> None:
    token_file = tmp_path / "token"
    if kind == "folder":
        token_file.mkdir()
    elif kind == "not-utf8":
        write(token_file, b"\xff\xfe" + SECRET.encode())
    with pytest.raises(TokenError) as caught:
        load_token(token_file, {})
    assert str(caught.value).startswith(f"--token-file {token_file}: cannot read it")


# -- new_token, save_token, private_folder --------------------------------------------
def test_new_tokens_are_random_and_pass_the_checks(tmp_path: Path) -> None:
    first, second = new_token(), new_token()
    assert first.value != second.value and first.source == "generated" and first.path is None
    saved = save_token(first, tmp_path / "tokens" / "token-8765")
    assert load_token(saved.path, {}) == Token(first.value, f"--token-file {saved.path}", saved.path)


def test_save_token_writes_a_0600_file_in_a_0700_folder(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token-8765"
    token = new_token()
    saved = save_token(token, path)
    assert saved == Token(token.value, "generated", path)
    assert path.read_bytes() == token.value + b"\n"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert os.listdir(path.parent) == ["token-8765"]  # no temporary file left behind


def test_save_token_replaces_the_file_rather_than_rewriting_it(tmp_path: Path) -> None:
    path = write(tmp_path / "token-8765", "old\n", 0o644)
    os.link(path, tmp_path / "old-link")
    token = new_token()
    save_token(token, path)
    assert path.read_bytes() == token.value + b"\n" and mode(path) == 0o600
    assert (tmp_path / "old-link").read_bytes() == b"old\n"  # a new inode was renamed over it
    assert sorted(os.listdir(tmp_path)) == ["old-link", "token-8765"]


def test_an_existing_folder_of_ours_is_made_0700(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    save_token(new_token(), folder / "token")
    assert mode(folder) == 0o700


def test_missing_folders_created_under_a_group_writable_umask_are_accepted(tmp_path: Path) -> None:
    # umask 002 is the default for users with a private group (Debian, Ubuntu): mkdir -p
    # makes the parent 0775. The folders are new and ours; refusing them fails every start.
    path = tmp_path / "neko-supervisor-1000" / "plugins-0123456789" / "token-8765"
    previous = os.umask(0o002)
    try:
        save_token(new_token(), path)
    finally:
        os.umask(previous)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700


@pytest.mark.parametrize("folder_mode", [0o770, 0o707, 0o777, 0o720])
def test_a_folder_others_can_write_to_is_refused(tmp_path: Path, folder_mode: int) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(folder_mode)
    with pytest.raises(TokenError) as caught:
        save_token(new_token(), folder / "token")
    assert str(caught.value).startswith(f"{folder} is not a private folder")
    assert not (folder / "token").exists()


def test_a_parent_others_can_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    with pytest.raises(TokenError) as caught:
        save_token(new_token(), shared / "state" / "token")
    assert str(caught.value).startswith(f"{shared} is not a private folder")
    assert not (shared / "state" / "token").exists()


@pytest.fixture
def foreign_folder(tmp_path: Path) -> Path:
    """A 0700 folder owned by another user."""
    folder = tmp_path / "foreign"
    folder.mkdir(mode=0o700)
    if os.getuid() == OTHER_UID:
        pytest.skip(f"running as uid {OTHER_UID}: no other uid to chown to")
    try:
        os.chown(folder, OTHER_UID, -1)
    except OSError as exc:  # not root, or a user namespace without that uid
        pytest.skip(f"cannot chown a folder to uid {OTHER_UID} here ({exc}): the owner check is untested")
    return folder


def test_a_folder_owned_by_someone_else_is_refused(foreign_folder: Path) -> None:
    with pytest.raises(TokenError) as caught:
        save_token(new_token(), foreign_folder / "token")
    assert str(caught.value).startswith(f"{foreign_folder} is not a private folder")
    assert f"owner uid {OTHER_UID}" in str(caught.value)
    assert not (foreign_folder / "token").exists()


def test_a_parent_owned_by_someone_else_is_refused(foreign_folder: Path) -> None:
    with pytest.raises(TokenError) as caught:
        save_token(new_token(), foreign_folder / "state" / "token")
    assert str(caught.value).startswith(f"{foreign_folder} is not a private folder")
    assert not (foreign_folder / "state" / "token").exists()


def test_a_symlink_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    with pytest.raises(TokenError) as caught:
        save_token(new_token(), link / "token")
    assert str(caught.value).startswith(f"{link} is not a private folder")
    assert os.listdir(target) == []


def test_a_dangling_symlink_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "state"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises((TokenError, FileExistsError)):
        save_token(new_token(), link / "token")
    assert not (tmp_path / "elsewhere").exists()


# -- HostPolicy ---------------------------------------------------------------------
LOOPBACK_HOSTS = ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST", "localhost", "127.0.0.1"]
FOREIGN_NAMES = ["evil.example:8765", "evil.example", "127.0.0.1.evil.example", "localhost.evil.example:8765"]


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1", "localhost"])
def test_a_loopback_bind_answers_to_loopback_names_only(bind: str) -> None:
    policy = HostPolicy.for_bind(bind)
    assert [policy.allows(host) for host in LOOPBACK_HOSTS] == [True] * len(LOOPBACK_HOSTS)
    assert [policy.allows(host) for host in FOREIGN_NAMES] == [False] * len(FOREIGN_NAMES)
    assert policy.allows("192.0.2.10:8765") is False  # not a wildcard: other addresses are not ours
    assert policy.allows(None) is True


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_a_wildcard_bind_answers_to_ip_literals_but_not_names(bind: str) -> None:
    policy = HostPolicy.for_bind(bind)
    for host in ["192.0.2.10:8765", "192.0.2.10", "[2001:db8::1]:8765", "127.0.0.1:8765", "[::1]:8765", "localhost:8765"]:
        assert policy.allows(host) is True, host
    for host in [*FOREIGN_NAMES, "myhost.lan:8765"]:
        assert policy.allows(host) is False, host
    assert policy.allows(None) is True


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1"])
def test_extra_names_are_allowed_in_any_case(bind: str) -> None:
    policy = HostPolicy.for_bind(bind, ("MyHost.LAN",))
    assert policy.allows("myhost.lan:8765") is True
    assert policy.allows("MYHOST.lan") is True
    assert policy.allows("evil.example:8765") is False
    assert policy.allows("myhost.lan.evil.example") is False


def test_a_specific_address_answers_to_itself() -> None:
    policy = HostPolicy.for_bind("192.0.2.5")
    assert policy.allows("192.0.2.5:8765") is True
    assert policy.allows("192.0.2.6:8765") is False
    assert policy.allows("localhost:8765") is False


def test_only_loopback_binds_count_as_this_machine_only() -> None:
    """serve warns for every other bind: the token would cross a network in clear."""
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "", "192.0.2.10", "example.org", "localhost.example.org"))
