import json
import socket

import torch

from sparseforge.profile.machine import cpu_model_name, machine_info


def test_machine_info_fields():
    info = machine_info()
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["torch_version"] == torch.__version__
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["logical_cores"], int)
    assert (info["cuda_device"] is None) == (not torch.cuda.is_available())
    json.dumps(info)


def test_no_hostname():
    info = machine_info()
    assert not any("host" in key for key in info)
    assert socket.gethostname() not in info.values()


def test_cpu_model_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU @ 3.0GHz\nflags\t: avx\n")
    assert cpu_model_name(cpuinfo) == "Test CPU @ 3.0GHz"


def test_cpu_model_falls_back_without_cpuinfo(tmp_path):
    assert cpu_model_name(tmp_path / "missing")
