"""Print the README's configuration table from the Config fields (paste it into README.md;
tests/test_readme.py checks that every setting is listed). Secrets have no flag."""

import dataclasses

from service_discovery.config import Config, flag_of

print("| Variable | Flag | Default | Meaning |")
print("|---|---|---|---|")
for f in dataclasses.fields(Config):
    default = "(unset)" if f.default is None else f"`{f.default}`"
    flag = flag_of(f)
    shown = f"`{flag}`" if flag else "(none: secret)"
    print(f"| `{f.metadata['env']}` | {shown} | {default} | {f.metadata['help']} |")
