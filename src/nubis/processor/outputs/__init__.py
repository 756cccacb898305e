"""Output bindings (a Nubis extension, docs/outputs.md): a function's responses published to
brokers, so functions chain, and each event's hop of its trace recorded (`nubis.traces`).

`registry.py` lists the kinds (one module each) and turns a configuration into `Outputs`;
`chain.py` is the wrapper the processor puts around a trigger's pool.
"""

from nubis.processor.outputs.chain import Outputs
from nubis.processor.outputs.registry import check_outputs, outputs_for

__all__ = ["Outputs", "check_outputs", "outputs_for"]
