"""What may leave the machine, per provider: `redact`, `block` or `allow`.

- `redact` (the default for a provider off this machine): findings become placeholders before a request is sent,
  and the answers are mapped back here.
- `block`: a note with findings is not sent at all; its partition says why.
- `allow`: sent as written. Never a remote provider's default: it must be configured, and the run metadata
  names it.

The local provider and OpenAI-compatible servers on a loopback address (Ollama, vLLM, llama.cpp, `fine-tune-dag
serve` on this machine) default to `allow`: nothing leaves. Gemini is always remote, whatever its `base_url`
(a local address in front of it is a proxy that forwards).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

POLICIES = ("redact", "block", "allow")
POLICY_HELP = (
    "what may leave this machine: 'redact' (personal data replaced by placeholders, mapped back here), 'block' "
    "(a note with personal data is not sent) or 'allow' (sent as written); empty: the provider's default, "
    "'redact' for Gemini and hosted OpenAI-compatible servers, 'allow' for the local model and servers on a "
    "loopback address"
)


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this machine (localhost, 127.0.0.0/8, ::1); an empty URL is the provider's own host."""
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").rstrip(".").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_destination(provider: str, base_url: str) -> bool:
    """True where requests stay on this machine: the local model, or an OpenAI-compatible server on loopback."""
    return provider not in ("gemini", "openai") or (provider == "openai" and is_loopback_url(base_url))


@dataclass(frozen=True)
class PolicyChoice:
    """The policy in force and why: configured, or the destination's default."""

    policy: str
    explicit: bool
    local: bool  # the destination is on this machine

    def describe(self, destination: str) -> str:
        """One line for the run metadata and the report."""
        how = "configured" if self.explicit else "default"
        if self.policy == "allow":
            where = "stays on this machine" if self.local else "sent as written, personal data included"
            return f"allow ({how}): {destination}; {where}"
        if self.policy == "block":
            return f"block ({how}): notes with personal data are not sent to {destination}"
        return f"redact ({how}): personal data replaced by placeholders before {destination}, mapped back here"


def choose_policy(configured: str, provider: str, base_url: str) -> PolicyChoice:
    """The configured policy, or the destination's default; anything else is a configuration error."""
    local = is_local_destination(provider, base_url)
    policy = configured.strip().lower()
    if policy and policy not in POLICIES:
        raise ValueError(f"unknown privacy policy '{configured}': use one of {', '.join(POLICIES)} (or leave it empty)")
    return PolicyChoice(policy or ("allow" if local else "redact"), bool(policy), local)
