"""Print the README's configuration table from the Config fields (paste it into README.md;
tests/test_readme.py checks that every setting is listed)."""

import dataclasses

from service_discovery.config import Config

print("| Variable | Flag | Default | Meaning |")
print("|---|---|---|---|")
for f in dataclasses.fields(Config):
    default = "(unset)" if f.default is None else f"`{f.default}`"
    flag = "--" + f.name.replace("_", "-")
    print(f"| `{f.metadata['env']}` | `{flag}` | {default} | {f.metadata['help']} |")
