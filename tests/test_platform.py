"""Platform defaults in one place: group sizes, host devices, and XLA flags that never
override the user's and never abort a process on a jaxlib that does not know them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from jax_iris import platform

FAST_MIN_MAX = "--xla_cpu_enable_fast_min_max=true"
YNN = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
UNKNOWN = "--xla_jax_iris_no_such_flag=1"


def test_group_size_is_fixed_per_platform():
    assert platform.group_size("cpu") == platform.CPU_GROUP_SIZE == 8
    for accelerator in ("gpu", "cuda", "rocm", "tpu", "GPU"):
        assert platform.group_size(accelerator) == platform.ACCELERATOR_GROUP_SIZE == 1024
    with pytest.raises(ValueError, match="unknown platform 'metal': expected one of cpu, gpu"):
        platform.group_size("metal")


def test_host_devices_follow_the_cores_this_process_may_use(monkeypatch):
    assert platform.default_host_devices() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(5000)))
    assert platform.default_host_devices() == platform.MAX_HOST_DEVICES
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert platform.default_host_devices() == 1


def test_apply_adds_flags_without_overriding_the_users(monkeypatch):
    monkeypatch.setattr(platform, "_backends_started", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_min_max=false --xla_dump_to=/tmp/x")
    assert platform.apply_xla_flags([FAST_MIN_MAX, YNN]) == [YNN]
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_enable_fast_min_max=false",
        "--xla_dump_to=/tmp/x",
        YNN,
    ]
    assert platform.apply_xla_flags([YNN]) == []  # a second call adds nothing twice
    assert os.environ["XLA_FLAGS"].count("ynn") == 1

    monkeypatch.delenv("XLA_FLAGS")
    assert platform.apply_xla_flags([FAST_MIN_MAX]) == [FAST_MIN_MAX]
    assert os.environ["XLA_FLAGS"] == FAST_MIN_MAX


def test_apply_is_refused_once_a_backend_runs(monkeypatch):
    jax.devices()  # this process's backend is up: XLA has read XLA_FLAGS already
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with pytest.raises(RuntimeError, match="before JAX starts its backends"):
        platform.apply_xla_flags([FAST_MIN_MAX])
    assert "XLA_FLAGS" not in os.environ
    assert platform.apply_xla_flags([]) == []


def test_accelerators_get_no_cpu_flags(monkeypatch):
    monkeypatch.setattr(platform, "_probe", lambda flags: pytest.fail("probed"))
    assert platform.xla_flags("gpu") == []
    assert platform.xla_flags("tpu") == []


@pytest.mark.slow
@pytest.mark.subprocess
def test_only_flags_this_jaxlib_accepts_are_offered(monkeypatch, tmp_path):
    """Real probes: this jaxlib knows the two CPU flags and aborts on an unknown one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(platform, "CPU_XLA_FLAGS", (*platform.CPU_XLA_FLAGS, UNKNOWN))
    assert platform.xla_flags("cpu") == [YNN, FAST_MIN_MAX]
    cache = json.loads((tmp_path / "jax_iris" / platform.PROBE_CACHE_NAME).read_text())
    version = platform._jaxlib_version()
    assert cache == {
        f"{version} {YNN}": True,
        f"{version} {FAST_MIN_MAX}": True,
        f"{version} {UNKNOWN}": False,
    }

    # Asked once per jaxlib version: the next call reads the answers.
    monkeypatch.setattr(platform, "_probe", lambda flags: pytest.fail("probed again"))
    assert platform.xla_flags("cpu") == [YNN, FAST_MIN_MAX]

    # What was offered does start a process that computes.
    env = {**os.environ, "XLA_FLAGS": " ".join([YNN, FAST_MIN_MAX]), "JAX_PLATFORMS": "cpu"}
    code = "import jax.numpy as jnp; print(float(jnp.maximum(jnp.arange(3.0), 1.5).sum()))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, "5.0"), done.stderr[-500:]


def test_a_damaged_probe_cache_is_probed_afresh(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "jax_iris" / platform.PROBE_CACHE_NAME
    cache.parent.mkdir()
    cache.write_text("{not json")
    probed = []
    monkeypatch.setattr(platform, "_probe", lambda flags: probed.append(flags) or True)
    assert platform.xla_flags("cpu") == list(platform.CPU_XLA_FLAGS)
    assert probed == [(flag,) for flag in platform.CPU_XLA_FLAGS]
    assert all(json.loads(cache.read_text()).values())


def test_this_process_trains_under_the_default_flags():
    """The test process imported jax_iris before any backend started, as commands do."""
    assert set(platform.xla_flags("cpu")) <= set(platform.numeric_xla_flags())


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("env", "code_before", "expected"),
    [
        ({}, "", [FAST_MIN_MAX, YNN]),
        # the user's own value stays; the other default is added
        (
            {"XLA_FLAGS": "--xla_cpu_enable_fast_min_max=false"},
            "",
            ["--xla_cpu_enable_fast_min_max=false", YNN],
        ),
        ({platform.OPT_OUT_VARIABLE: "none"}, "", []),
        # JAX already running: XLA has read its flags, so nothing is added
        ({}, "import jax; jax.numpy.zeros(1).block_until_ready(); ", []),
    ],
)
def test_importing_the_nets_sets_the_flags_once_and_only_before_jax_runs(
    env, code_before, expected
):
    code = (
        f"{code_before}import jax_iris.models, jax_iris.train; from jax_iris import platform;"
        " print(' '.join(platform.numeric_xla_flags()))"
    )
    clean = {
        k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", platform.OPT_OUT_VARIABLE)
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == sorted(expected)


@pytest.mark.slow
@pytest.mark.subprocess
def test_asking_whether_jax_runs_starts_nothing_and_changes_no_option():
    """The question is put through ``jax.config`` alone: before and after a backend starts."""
    code = (
        "import jax; from jax_iris import platform as p; option = p.PROBE_OPTION;"
        " before = getattr(jax.config, option); idle = p._backends_started();"
        " still_idle = p._backends_started(); jax.devices(); running = p._backends_started();"
        " print(idle, still_idle, running, getattr(jax.config, option) == before)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["False", "False", "True", "True"], done.stderr[-500:]
