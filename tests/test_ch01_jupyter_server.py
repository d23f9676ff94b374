"""Chapter 01's remote JupyterLab setup: the script's refusals, and the config it writes tested against a real server.

The server tests start `jupyter lab` once (module-scoped) with the generated config on a free 127.0.0.1 port in a
temporary HOME, then check authentication, XSRF protection, a kernel run over REST + websocket, a real headless
Chromium login, and finally that stopping the server leaves no process behind and frees the port.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "01-peft-setup" / "jupyter_server_setup.py"
PASSWORD = "tunnel-vision-42"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BIN = Path(sys.executable).parent


def _load_script():
    spec = importlib.util.spec_from_file_location("jupyter_server_setup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup = _load_script()


def run_script(*args: str, password: str | None = PASSWORD, config_dir: Path, extra_env: dict | None = None):
    env = {k: v for k, v in os.environ.items() if k != setup.PASSWORD_ENV}
    if password is not None:
        env[setup.PASSWORD_ENV] = password
    env.update(extra_env or {})
    return subprocess.run([sys.executable, str(SCRIPT), "--config-dir", str(config_dir), *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate (apt-get install openssl)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    return cert, key


# --- the script on its own -------------------------------------------------------------------------------------


def test_written_config_is_safe_by_default(tmp_path):
    from jupyter_server.auth import passwd_check

    result = run_script(config_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "jupyter_server_config.json"
    text = path.read_text()
    assert PASSWORD not in text
    assert path.stat().st_mode & 0o777 == 0o600
    config = json.loads(text)
    server, identity = config["ServerApp"], config["PasswordIdentityProvider"]
    assert server["ip"] == "localhost" and server["port"] == 8888 and server["port_retries"] == 0
    assert server["open_browser"] is False and server["disable_check_xsrf"] is False
    assert server["allow_origin"] == "" and server["allow_remote_access"] is False
    assert "certfile" not in server and "allow_root" not in server
    assert identity["hashed_password"].startswith("argon2:$argon2id$")
    assert passwd_check(identity["hashed_password"], PASSWORD)
    assert not passwd_check(identity["hashed_password"], PASSWORD + "x")
    assert identity["password_required"] is True and identity["token"] == ""
    assert "ssh -L 8888:localhost:8888 " in result.stdout and "http://localhost:8888/" in result.stdout


@pytest.mark.parametrize("args, password, reason", [
    ((), "", "password is empty"),
    ((), "        ", "password is empty"),
    ((), "short", "at least 8"),
    (("--ip", "0.0.0.0"), PASSWORD, "public address"),
    (("--ip", ""), PASSWORD, "public address"),
    (("--ip", "203.0.113.7"), PASSWORD, "public address"),
    (("--ip", "gpu.example.org"), PASSWORD, "public address"),
    (("--ip", "0.0.0.0", "--certfile", "/nonexistent/cert.pem", "--keyfile", "/nonexistent/key.pem"), PASSWORD,
     "does not exist"),
    (("--ip", "0.0.0.0", "--certfile", "/nonexistent/cert.pem"), PASSWORD, "both --certfile and --keyfile"),
    (("--port", "70000"), PASSWORD, "not a TCP port"),
])
def test_unsafe_setups_are_refused(tmp_path, args, password, reason):
    result = run_script(*args, password=password, config_dir=tmp_path / "cfg")
    assert result.returncode == setup.REFUSED_EXIT
    assert result.stderr.startswith("refused: ") and reason in result.stderr
    assert not (tmp_path / "cfg").exists()


def test_certificate_and_key_must_match(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    result = run_script("--ip", "0.0.0.0", "--certfile", str(cert), "--keyfile", str(bogus), config_dir=tmp_path / "c")
    assert result.returncode == setup.REFUSED_EXIT and "not a matching PEM certificate" in result.stderr


def test_public_address_with_tls_is_accepted(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    result = run_script("--ip", "0.0.0.0", "--port", "9443", "--certfile", str(cert), "--keyfile", str(key),
                        config_dir=tmp_path / "cfg")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "cfg" / "jupyter_server_config.json").read_text())
    assert config["ServerApp"]["certfile"] == str(cert) and config["ServerApp"]["keyfile"] == str(key)
    assert config["ServerApp"]["allow_remote_access"] is True and config["ServerApp"]["allow_origin"] == ""
    assert config["PasswordIdentityProvider"]["secure_cookie"] is True
    assert ":9443/" in result.stdout and "https://" in result.stdout and "ssh -L" not in result.stdout


def test_there_is_no_password_option(tmp_path):
    result = run_script("--password", PASSWORD, config_dir=tmp_path / "cfg")
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    assert not (tmp_path / "cfg").exists()
    assert "--password" not in run_script("--help", config_dir=tmp_path).stdout


def test_existing_config_is_replaced_only_with_force(tmp_path):
    path = tmp_path / "jupyter_server_config.json"
    path.write_text("{}")
    path.chmod(0o644)
    result = run_script(config_dir=tmp_path)
    assert result.returncode == setup.REFUSED_EXIT and "--force" in result.stderr and path.read_text() == "{}"
    assert run_script("--force", config_dir=tmp_path).returncode == 0
    assert "argon2:" in path.read_text() and path.stat().st_mode & 0o777 == 0o600


def test_no_terminal_and_no_environment_variable_is_refused(tmp_path):
    result = run_script(password=None, config_dir=tmp_path / "cfg")
    assert result.returncode == setup.REFUSED_EXIT and setup.PASSWORD_ENV in result.stderr
    assert not (tmp_path / "cfg").exists()


def test_password_typed_at_a_terminal_is_not_echoed(tmp_path):
    pexpect = pytest.importorskip("pexpect", reason="pexpect (an IPython dependency) drives the pseudo-terminal")
    env = {k: v for k, v in os.environ.items() if k != setup.PASSWORD_ENV}
    child = pexpect.spawn(sys.executable, [str(SCRIPT), "--config-dir", str(tmp_path)], env=env, timeout=30,
                          encoding="utf-8")
    child.logfile_read = transcript = io.StringIO()  # everything the terminal shows
    child.expect("not echoed")
    child.sendline(PASSWORD)
    child.expect("Repeat")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    shown = transcript.getvalue()
    assert child.exitstatus == 0, shown
    assert "Repeat it" in shown and "Wrote" in shown and PASSWORD not in shown
    from jupyter_server.auth import passwd_check

    hashed = json.loads((tmp_path / "jupyter_server_config.json").read_text())["PasswordIdentityProvider"]
    assert passwd_check(hashed["hashed_password"], PASSWORD)


# --- the real server -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on the port and a new server could bind it (SO_REUSEADDR, as servers do: the closed
    connections' TIME_WAIT entries do not block that)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Server:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home = tmp / "home"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "IPYTHON"))}
        self.env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
                        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_DATA_DIR=str(tmp / "data"),
                        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        # The script writes into the default config dir ($JUPYTER_CONFIG_DIR), as it would for a learner.
        result = subprocess.run([sys.executable, str(SCRIPT), "--ip", "127.0.0.1", "--port", str(self.port),
                                 "--root-dir", str(ROOT)], env={**self.env, setup.PASSWORD_ENV: PASSWORD},
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        self.log_path = tmp / "server.log"
        command = [str(BIN / "jupyter"), "lab"] + (["--allow-root"] if os.geteuid() == 0 else [])
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(command, env=self.env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.descendants: set[int] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"jupyter lab exited early:\n{self.log()}"
            try:
                if requests.get(self.url + "/login", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"jupyter lab did not answer within 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def login(self, password: str = PASSWORD) -> requests.Session:
        session = requests.Session()
        assert session.get(self.url + "/login", timeout=10).status_code == 200
        xsrf = session.cookies["_xsrf"]  # the login form's XSRF token, set as a cookie with the page
        session.post(self.url + "/login", data={"password": password, "_xsrf": xsrf}, allow_redirects=False, timeout=30)
        return session

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.descendants |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
            self.proc.send_signal(signal.SIGTERM)  # what `kill PID` or systemd's stop sends
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("jupyter"))
    yield srv
    srv.stop()


def xsrf_headers(session: requests.Session) -> dict[str, str]:
    return {"X-XSRFToken": session.cookies["_xsrf"]}


def start_kernel(server, session: requests.Session) -> str:
    """Start a python3 kernel through the REST API (as JupyterLab does) and return its id."""
    started = session.post(server.url + "/api/kernels", json={"name": "python3"}, headers=xsrf_headers(session),
                           timeout=30)
    assert started.status_code == 201, started.text
    return started.json()["id"]


@pytest.mark.slow
def test_unauthenticated_requests_are_refused(server):
    assert requests.get(server.url + "/api/contents", timeout=10).status_code == 403
    assert requests.post(server.url + "/api/kernels", json={}, timeout=10).status_code == 403
    page = requests.get(server.url + "/lab", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")


@pytest.mark.slow
def test_wrong_password_is_refused(server):
    session = server.login("not-the-password")
    assert not any(name.startswith("username-") for name in session.cookies.keys())
    assert session.get(server.url + "/api/contents", headers=xsrf_headers(session), timeout=10).status_code == 403


@pytest.mark.slow
def test_right_password_logs_in_and_lists_the_course(server):
    session = server.login()
    assert any(name.startswith("username-") for name in session.cookies.keys())
    listing = session.get(server.url + "/api/contents", headers=xsrf_headers(session), timeout=10)
    assert listing.status_code == 200
    names = {item["name"] for item in listing.json()["content"]}
    assert {"01-peft-setup", "utils"} <= names
    chapter = session.get(server.url + "/api/contents/01-peft-setup", headers=xsrf_headers(session), timeout=10)
    assert "jupyter_server_setup.py" in {item["name"] for item in chapter.json()["content"]}


@pytest.mark.slow
def test_post_without_xsrf_token_is_refused(server):
    session = server.login()
    refused = session.post(server.url + "/api/contents", json={"type": "notebook"}, timeout=10)
    assert refused.status_code == 403 and "_xsrf" in refused.text
    # The same request with the token goes through, so it was the missing token that was refused.
    made = session.post(server.url + "/api/contents", json={"type": "file", "ext": ".txt"},
                        headers=xsrf_headers(session), timeout=10)
    assert made.status_code == 201
    path = made.json()["path"]
    assert session.delete(f"{server.url}/api/contents/{path}", headers=xsrf_headers(session), timeout=10).status_code == 204


def execute(server, session, kernel_id: str, code: str, timeout_s: float = 60) -> str:
    """Run `code` in a kernel over the server's websocket channels; return the text/plain execute_result."""
    import websocket  # websocket-client, a jupyter dependency

    cookie = "; ".join(f"{k}={v}" for k, v in session.cookies.items())
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels",
                                     cookie=cookie, timeout=timeout_s)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                return msg["content"]["data"]["text/plain"]
            if msg["msg_type"] == "error":
                raise AssertionError(f"kernel error: {msg['content']}")
        raise AssertionError(f"no execute_result within {timeout_s} s")
    finally:
        ws.close()


@pytest.mark.slow
def test_kernel_started_over_rest_computes(server):
    session = server.login()
    kernel_id = start_kernel(server, session)
    try:
        assert execute(server, session, kernel_id, "1+1") == "2"
    finally:
        session.delete(f"{server.url}/api/kernels/{kernel_id}", headers=xsrf_headers(session), timeout=30)


@pytest.mark.slow
def test_browser_logs_in_and_sees_the_course(server):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = f"headless Chromium is needed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run this test)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    profile = server.log_path.parent / "chromium-profile"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server", "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(60)
        driver.get(server.url + "/lab")
        wait = WebDriverWait(driver, 60)
        password = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]")))
        assert "/login" in driver.current_url
        password.send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        # JupyterLab's file browser lists the repository root: the chapter folders appear.
        item = "//li[contains(@class,'jp-DirListing-item')]//span[contains(@class,'jp-DirListing-itemText')]"
        wait.until(ec.visibility_of_element_located((By.XPATH, f"{item}[normalize-space(.)='01-peft-setup']")))
        listed = {el.get_attribute("textContent").strip() for el in driver.find_elements(By.XPATH, item)}
        assert {"01-peft-setup", "utils"} <= listed, listed
        assert "/lab" in driver.current_url
        time.sleep(1)  # let the launcher finish drawing for the screenshot
        build = ROOT / "build"
        build.mkdir(exist_ok=True)
        shot = build / "jupyterlab-login.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


@pytest.mark.slow
def test_server_stops_and_leaves_nothing_running(server):
    session = server.login()
    start_kernel(server, session)  # a kernel left running: stopping the server must stop it too
    deadline = time.monotonic() + 30
    while not psutil.Process(server.proc.pid).children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    server.stop()
    assert server.proc.returncode is not None
    assert server.descendants, "the kernel process was not seen"
    time.sleep(0.5)
    alive = [pid for pid in server.descendants | {server.proc.pid} if psutil.pid_exists(pid)
             and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"still running: {alive}"
    assert port_is_free(server.port)
