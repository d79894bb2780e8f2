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

Two of Mitogen's costs are paid once per run here instead of again and again (py-spy on a
no-op site.yml, development topology):
- To find what to send with a module, Mitogen compiles it and every module_utils file it
  imports, in one service that every task's worker waits on: the same module_utils (basic.py
  and the rest) again for each module. Each source is now compiled once (keyed by its text, so
  an edited file is compiled again): 2.46 s of that service's time became 0.38 s.
- For every task that runs a collection's module, the task's worker (a new process each time)
  lists the installed collections, importing each and reading its YAML: 48 collections in the
  `ansible` package, 2.5 s over a run. The list is now made once, in the process that forks
  the workers, and they inherit it: 0.3 s.
With the first alone, a no-op site.yml on the development topology went from 18.5-18.7 to
14.5-16.0 s; the second shows in py-spy's samples, not beyond the spread of wall times here.
"""

import functools
from collections.abc import Callable, Iterator
from typing import Any

import ansible.collections.list
import ansible_mitogen.affinity
import ansible_mitogen.module_finder
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule as _MitogenLinear

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()
# module_finder calls the built-in compile(source, name, "exec"); this name comes first.
ansible_mitogen.module_finder.compile = functools.lru_cache(maxsize=1024)(compile)

_list_collection_dirs = ansible.collections.list.list_collection_dirs


def listed_once() -> Callable[..., Iterator[bytes]]:
    """list_collection_dirs with the configured search paths, listed once from now on."""
    found = list(_list_collection_dirs())

    def list_collection_dirs(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        return iter(found) if not (args or kwargs) else _list_collection_dirs(*args, **kwargs)

    return list_collection_dirs


class StrategyModule(_MitogenLinear):
    def run(self, iterator: Any, play_context: Any) -> int:
        # Collections do not come and go during a run.
        ansible.collections.list.list_collection_dirs = listed_once()
        return super().run(iterator, play_context)


__all__ = ["StrategyModule"]
