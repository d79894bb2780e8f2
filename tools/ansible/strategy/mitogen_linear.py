"""Ansible's linear strategy run through Mitogen (ansible.cfg selects it for every kit run).

Mitogen keeps one Python interpreter per host for the whole run and sends modules to it over
the existing SSH or `docker exec` channel, instead of starting Python and unpacking the module
for every task: a no-op re-run of site.yml takes less than half the time. It changes how
modules reach hosts, not what they do; the roles run the same without it (the stock `linear`
strategy: `ANSIBLE_STRATEGY=linear`). Mitogen accelerates the `ssh`, `docker` and `local`
connections by those names, which is why the inventories say `docker`, not its FQCN.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
