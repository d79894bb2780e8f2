"""Ansible's linear strategy run through Mitogen (ansible.cfg selects it for every kit run).

Mitogen keeps one Python interpreter per host for the whole run and sends modules to it over
the existing SSH or `docker exec` channel, instead of starting Python and unpacking the module
for every task: a no-op re-run of site.yml takes less than half the time. It changes how
modules reach hosts, not what they do; the roles run the same without it (the stock `linear`
strategy: `ANSIBLE_STRATEGY=linear`). Mitogen accelerates the `ssh`, `docker` and `local`
connections by those names, which is why the inventories say `docker`, not its FQCN.

Mitogen also pins processes to CPUs: on a machine with 2 or 3 cores its connection process
gets one core and Ansible's top-level process and every task's worker share the other, so the
controller's work runs on one core while the other mostly waits. The kit leaves placement to
the kernel (Mitogen's no-op policy): a no-op site.yml on the development topology went from
24.7 to 20.0 s on 2 cores; 100 skipped tasks on 4 hosts from 3.4 to 2.6 s.

To find what to send with a module, Mitogen compiles it and every module_utils file it
imports, once per module, in one service that every task's worker waits on: the same
module_utils (basic.py and the rest) again for each module, about 2.3 s of a no-op site.yml.
Compiling each source once (keyed by its text, so an edited file is compiled again) took a
no-op run on the development topology from 18.5-18.7 to 14.5-16.0 s.
"""

import functools

import ansible_mitogen.affinity
import ansible_mitogen.module_finder
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()
# module_finder calls the built-in compile(source, name, "exec"); this name comes first.
ansible_mitogen.module_finder.compile = functools.lru_cache(maxsize=1024)(compile)

__all__ = ["StrategyModule"]
