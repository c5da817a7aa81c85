"""Network profiles for the client link (topologies/profiles.conf)."""
import dataclasses
import os

from emul.shaping import Shape

PROFILES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles.conf")


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    rtt_ms: float
    jitter_ms: float
    loss: float

    def shape(self):
        """The Shape of each direction: half the RTT, the jitter split alike."""
        return Shape(self.rtt_ms / 2, self.jitter_ms / 2, self.loss)


def load(path=PROFILES_FILE):
    """Returns {name: Profile}; raises ValueError naming the bad line."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            try:
                name, rtt, jitter, loss = line
                p = Profile(name, float(rtt), float(jitter), float(loss))
                p.shape()  # validates ranges
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
            out[name] = p
    return out


def get(name, path=PROFILES_FILE):
    profiles = load(path)
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(profiles)}")
    return profiles[name]
