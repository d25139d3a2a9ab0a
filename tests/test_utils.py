import subprocess
import sys
import textwrap

import pytest

from tada.utils import malloc_mmapped_bytes


@pytest.mark.skipif(malloc_mmapped_bytes() < 0, reason="needs glibc (mallinfo2)")
def test_tune_cpu_allocator_keeps_large_tensors_off_mmap():
    # in a fresh process: before tuning a 64 MB tensor is an mmap-ed block, after tuning it is not
    code = textwrap.dedent(
        """
        import torch
        from tada.utils import malloc_mmapped_bytes, tune_cpu_allocator
        base = malloc_mmapped_bytes()
        x = torch.empty(16 << 20)  # 64 MB
        before = malloc_mmapped_bytes() - base
        del x
        assert tune_cpu_allocator()
        base = malloc_mmapped_bytes()
        y = torch.empty(16 << 20)
        after = malloc_mmapped_bytes() - base
        print(before, after)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = map(int, out.split())
    assert before >= 64 << 20
    assert after == 0
