import subprocess
import sys


def test_import_builds_nothing_and_touches_no_gpu_or_plotting():
    code = (
        "import sys, torch, sparseforge\n"
        "assert not torch.cuda.is_initialized(), 'import initialized CUDA'\n"
        "heavy = [m for m in ('matplotlib', 'torchvision', 'triton') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(sorted(sparseforge.__all__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "'prune'" in proc.stdout and "'Session'" in proc.stdout
