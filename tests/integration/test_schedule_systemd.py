"""The systemd service and timer the schedule role installs, rendered by Ansible from the role's own
templates and defaults, pass `systemd-analyze verify`; a bad OnCalendar is refused before anything is
installed (the role's first check), as systemd itself would refuse the timer."""
import json
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

ROLE = ROOT / "roles" / "partnercerts_schedule"


def render(tmp_path, **overrides):
    """Render service.j2 and timer.j2 with the role's defaults (plus overrides) through ansible-playbook."""
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars_files": [str(ROLE / "defaults" / "main.yml")],
             "tasks": [{"name": "Render", "ansible.builtin.template": {
                 "src": str(ROLE / "templates" / "{{ item }}.j2"),
                 "dest": str(tmp_path / "{{ partnercerts_schedule_name }}.{{ item }}")},
                 "loop": ["service", "timer"]}]}]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(play))
    # Extra vars, as `scripts/inv schedule` passes them (they outrank the defaults loaded above).
    (tmp_path / "extra.json").write_text(json.dumps({"partnercerts_schedule_repo_dir": str(ROOT), **overrides}))
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "localhost,",
                        "-e", f"@{tmp_path / 'extra.json'}", str(tmp_path / "render.yml")],
                       capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    assert p.returncode == 0, p.stdout + p.stderr
    name = overrides.get("partnercerts_schedule_name", "partnercerts-rotate")
    return tmp_path / f"{name}.service", tmp_path / f"{name}.timer"


def verify(*units):
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, units)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("overrides", [{}, {"partnercerts_schedule_on_calendar": "Mon..Fri *-*-* 05:30:00",
                                            "partnercerts_schedule_randomized_delay": "2h",
                                            "partnercerts_schedule_name": "psa-rotate"}])
def test_the_rendered_units_pass_systemd_analyze_verify(tmp_path, overrides):
    service, timer = render(tmp_path, **overrides)
    r = verify(service, timer)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    text = service.read_text()
    assert f"ExecStart={ROOT}/scripts/scheduled-rotate /etc/partnercerts/rotate.env" in text
    assert "Type=oneshot" in text and "NoNewPrivileges=true" in text
    assert "Persistent=true" in timer.read_text()


def test_a_bad_calendar_is_refused_by_the_role_check_and_by_systemd(tmp_path):
    service, timer = render(tmp_path, partnercerts_schedule_on_calendar="every monday at six")
    r = verify(service, timer)
    assert r.returncode != 0 and "Failed to parse calendar specification" in r.stderr, r.stderr
    # The role's first task runs exactly this before it writes the environment file or any unit.
    install = yaml.safe_load((ROLE / "tasks" / "install.yml").read_text())
    assert install[0]["ansible.builtin.command"]["argv"][:2] == ["systemd-analyze", "calendar"]
    check = subprocess.run(["systemd-analyze", "calendar", "every monday at six"], capture_output=True, text=True)
    assert check.returncode != 0 and "Failed to parse calendar specification" in check.stderr
