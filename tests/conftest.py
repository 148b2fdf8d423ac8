import pytest
import torch

# Test sizes are tiny: one intra-op thread avoids OpenMP start-up and spin costs that dominate
# small FFTs (and lets pytest share a 2-core machine with other work).
torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# A crash (SIGSEGV and the like) prints its native stack, not only the Python one.
if hasattr(torch._C, "_set_print_stack_traces_on_fatal_signal"):
    torch._C._set_print_stack_traces_on_fatal_signal(True)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
