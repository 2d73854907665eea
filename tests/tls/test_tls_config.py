"""The ``tls_*`` keys: checked when the configuration is loaded, each mistake one line naming its
key (and its file's line, or its environment variable), never a traceback, never a key's text.

Rules: ``tls_cert_file`` and ``tls_key_file`` both or neither; ``tls_client_ca_file`` only with
them; each file readable, the certificate and the CA PEM certificates, the key the certificate's
and unencrypted. ``privacy-gateway serve`` exits 2 on any of these, before it binds a port.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from service.config import ConfigError, load, server_tls
from tests.helpers.certificates import Pki, encrypted_key_file
from tests.helpers.processes import CLI, TIMEOUT
from tests.helpers.tls_gateway import write_config


def assert_quotes_no_pem(message: str, directory: Path) -> None:
    """No line of any PEM file under ``directory`` (a private key's above all) is in
    ``message``, nor a PEM armour line."""
    assert "-----" not in message
    assert "PRIVATE KEY" not in message
    for pem in directory.rglob("*.pem"):
        for line in pem.read_text(errors="replace").splitlines():
            if len(line) >= 16:
                assert line not in message, f"{message!r} quotes {pem}"


def load_error(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, env={} if env is None else env)
    message = str(info.value)
    assert "\n" not in message, "one line"
    assert_quotes_no_pem(message, path.parent)
    return message


def line_of(path: Path, key: str) -> int:
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.startswith(f"{key} ="))


def garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    return path


# -- what loads ---------------------------------------------------------------------------------


def test_tls_and_mutual_tls_configurations_load(tmp_path: Path, pki: Pki) -> None:
    plain = load(write_config(tmp_path, pki, mutual=False), env={})
    mutual = load(write_config(tmp_path, pki, mutual=True), env={})

    assert plain.tls_cert_file == str(pki.server.cert_file)
    assert plain.tls_key_file == str(pki.server.key_file)
    assert plain.tls_client_ca_file is None
    assert mutual.tls_client_ca_file == str(pki.client_ca.cert_file)
    plain_tls, mutual_tls = server_tls(plain), server_tls(mutual)
    assert plain_tls is not None
    assert not plain_tls.mutual
    assert mutual_tls is not None
    assert mutual_tls.mutual
    assert mutual_tls.client_ca == pki.client_ca.cert_pem


def test_without_the_keys_there_is_no_tls(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False, tls_cert_file="", tls_key_file="")

    assert server_tls(load(path, env={})) is None


def test_the_environment_names_the_files(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False, tls_cert_file="", tls_key_file="")
    env = {
        "PRIVACY_GATEWAY_TLS_CERT_FILE": str(pki.server.cert_file),
        "PRIVACY_GATEWAY_TLS_KEY_FILE": str(pki.server.key_file),
        "PRIVACY_GATEWAY_TLS_CLIENT_CA_FILE": str(pki.client_ca.cert_file),
    }

    config = load(path, env=env)

    assert (config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file) == (
        str(pki.server.cert_file),
        str(pki.server.key_file),
        str(pki.client_ca.cert_file),
    )


# -- what does not, and how it says so ------------------------------------------------------------


def test_a_certificate_without_its_key(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False, tls_key_file="")

    assert load_error(path) == (
        f"{path}:{line_of(path, 'tls_cert_file')}: tls_cert_file: needs tls_key_file too "
        "(TLS takes a certificate and its private key)"
    )


def test_a_key_without_its_certificate(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False, tls_cert_file="")

    assert load_error(path).startswith(
        f"{path}:{line_of(path, 'tls_key_file')}: tls_key_file: needs tls_cert_file too"
    )


def test_a_client_ca_without_a_certificate(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=True, tls_cert_file="", tls_key_file="")

    assert load_error(path) == (
        f"{path}:{line_of(path, 'tls_client_ca_file')}: tls_client_ca_file: needs tls_cert_file "
        "and tls_key_file (mutual TLS is TLS that checks callers)"
    )


@pytest.mark.parametrize("key", ["tls_cert_file", "tls_key_file", "tls_client_ca_file"])
def test_a_missing_file(tmp_path: Path, pki: Pki, key: str) -> None:
    missing = tmp_path / "nowhere.pem"
    path = write_config(tmp_path, pki, mutual=True, **{key: str(missing)})

    assert load_error(path) == (
        f"{path}:{line_of(path, key)}: {key}: cannot read {missing}: No such file or directory"
    )


def test_a_directory_where_a_file_goes(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False, tls_cert_file=str(pki.server_ca.directory))

    assert load_error(path) == (
        f"{path}:{line_of(path, 'tls_cert_file')}: tls_cert_file: "
        f"cannot read {pki.server_ca.directory}: Is a directory"
    )


@pytest.mark.parametrize("key", ["tls_cert_file", "tls_client_ca_file"])
def test_garbage_instead_of_a_certificate(tmp_path: Path, pki: Pki, key: str) -> None:
    wrong = garbage(tmp_path)
    path = write_config(tmp_path, pki, mutual=True, **{key: str(wrong)})

    assert load_error(path) == (
        f"{path}:{line_of(path, key)}: {key}: {wrong} holds no readable PEM certificate"
    )


def test_a_private_key_where_the_certificate_goes_is_not_quoted(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False, tls_cert_file=str(pki.server.key_file))

    assert load_error(path) == (
        f"{path}:{line_of(path, 'tls_cert_file')}: tls_cert_file: "
        f"{pki.server.key_file} holds no readable PEM certificate"
    )


def test_garbage_instead_of_the_key(tmp_path: Path, pki: Pki) -> None:
    wrong = garbage(tmp_path)
    path = write_config(tmp_path, pki, mutual=False, tls_key_file=str(wrong))

    assert load_error(path) == (
        f"{path}:{line_of(path, 'tls_key_file')}: tls_key_file: "
        f"{wrong} holds no readable PEM private key"
    )


def test_the_key_of_another_certificate(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False, tls_key_file=str(pki.client.key_file))

    assert load_error(path) == (
        f"{path}:{line_of(path, 'tls_key_file')}: tls_key_file: {pki.client.key_file} is not "
        f"the private key of the certificate in {pki.server.cert_file}"
    )


def test_an_encrypted_key_is_refused_not_prompted_for(tmp_path: Path, pki: Pki) -> None:
    encrypted = encrypted_key_file(tmp_path / "encrypted-key.pem")
    path = write_config(tmp_path, pki, mutual=False, tls_key_file=str(encrypted))

    assert load_error(path) == (
        f"{path}:{line_of(path, 'tls_key_file')}: tls_key_file: "
        f"{encrypted} is an encrypted private key; give it unencrypted"
    )


def test_a_wrong_file_from_the_environment_names_the_variable(tmp_path: Path, pki: Pki) -> None:
    path = write_config(tmp_path, pki, mutual=False)
    missing = tmp_path / "nowhere.pem"

    message = load_error(path, env={"PRIVACY_GATEWAY_TLS_CERT_FILE": str(missing)})

    assert message == (
        f"PRIVACY_GATEWAY_TLS_CERT_FILE: cannot read {missing}: No such file or directory"
    )


def test_a_file_gone_after_loading_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    config = load(write_config(tmp_path, pki, mutual=True), env={})
    pki.client_ca.cert_file.unlink()

    with pytest.raises(ConfigError) as info:
        server_tls(config)

    assert str(info.value) == (
        f"tls_client_ca_file: cannot read {pki.client_ca.cert_file}: No such file or directory"
    )


# -- privacy-gateway serve ------------------------------------------------------------------------


def _broken(tmp_path: Path, pki: Pki, case: str) -> tuple[Path, str]:
    """A configuration broken as ``case`` says, and the key its error must name."""
    if case == "cert without key":
        return write_config(tmp_path, pki, mutual=False, tls_key_file=""), "tls_cert_file"
    if case == "CA without cert":
        config = write_config(tmp_path, pki, mutual=True, tls_cert_file="", tls_key_file="")
        return config, "tls_client_ca_file"
    if case == "missing file":
        missing = str(tmp_path / "nowhere.pem")
        return write_config(tmp_path, pki, mutual=True, tls_client_ca_file=missing), (
            "tls_client_ca_file"
        )
    assert case == "garbage PEM"
    return write_config(tmp_path, pki, mutual=False, tls_key_file=str(garbage(tmp_path))), (
        "tls_key_file"
    )


@pytest.mark.parametrize(
    "case", ["cert without key", "CA without cert", "missing file", "garbage PEM"]
)
def test_serve_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, pki: Pki, cli_env: dict[str, str], case: str
) -> None:
    config, key = _broken(tmp_path, pki, case)

    result = subprocess.run(
        [*CLI, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=cli_env,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"privacy-gateway: {config}:{line_of(config, key)}: {key}: ")
    assert_quotes_no_pem(result.stderr, tmp_path)
