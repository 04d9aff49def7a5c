"""Who may deliver receipts: the provider's Username/PIN and the allowed source networks."""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Credentials:
    """The Username and PIN the operator set on the provider's Delivery Receipts page."""

    username: str = ""
    pin: str = ""

    @property
    def required(self) -> bool:
        return bool(self.username or self.pin)

    def accept(self, fields: Mapping[str, str]) -> bool:
        """True when every configured credential matches.

        Both are compared, in constant time, whatever the first result: the
        answer must not tell which one was wrong, not even by its timing.
        """
        username_ok = _same(fields.get("Username", ""), self.username) if self.username else True
        pin_ok = _same(fields.get("PIN", ""), self.pin) if self.pin else True
        return username_ok & pin_ok


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# An X-Forwarded-For hop as proxies write it: an address, IPv6 maybe in
# brackets, maybe with the client's port (some load balancers add it).
_HOP = re.compile(r"\[([^\]]+)\](?::\d{1,5})?|(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}|([^\[\]]+)")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    match = _HOP.fullmatch(text.strip())
    if match is None:
        return None
    try:
        address = ipaddress.ip_address(match.group(1) or match.group(2) or match.group(3))
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket appears as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)
def normalised_address(text: str) -> str:
    """The address as stored, logged and matched: no brackets or port, IPv4-mapped IPv6 as IPv4.

    Text that holds no address (a proxy's "unknown") becomes "unknown":
    it is stored and logged, so it must not be a header's raw bytes.
    """
    address = _address(text)
    return str(address) if address is not None else "unknown"


@dataclass(frozen=True)
class SourcePolicy:
    """allow_from, monitor_allow_from and trusted_proxies: who may POST receipts, and who may watch."""

    allow_from: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    monitor_allow_from: tuple[Network, ...] = ()

    def refused_at_accept(self, peer: str) -> bool:
        """True for a connecting address that could be served nothing at all, so not even a thread or a
        TLS handshake is spent on it: outside allow_from and outside monitor_allow_from, when both are set.

        A trusted proxy is never refused here: who its client is, only its
        X-Forwarded-For header says.
        """
        if not self.allow_from or not self.monitor_allow_from:
            return False
        address = _address(peer)
        if address is None:
            return True
        return not (any(address in network for network in self.allow_from)
                    or any(address in network for network in self.monitor_allow_from)
                    or any(address in network for network in self.trusted_proxies))

    def monitors(self, client: str) -> bool:
        """May `client` read /healthz and /metrics? Everyone, unless monitor_allow_from says who."""
        if not self.monitor_allow_from:
            return True
        address = _address(client)
        return address is not None and any(address in network for network in self.monitor_allow_from)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The real client, normalised: the peer, or, behind a trusted proxy, the nearest untrusted
        X-Forwarded-For hop."""
        if not forwarded_for or not self.trusted_proxies or not self._trusted(peer):
            return normalised_address(peer)
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return normalised_address(hop)
        return normalised_address(hops[0] if hops else peer)

    def allows(self, client: str) -> bool:
        if not self.allow_from:
            return True
        address = _address(client)
        return address is not None and any(address in network for network in self.allow_from)

    def trusts(self, peer: str) -> bool:
        """Is the connecting peer a trusted proxy, whose X-Forwarded-* headers may be believed?"""
        return self._trusted(peer)

    def _trusted(self, text: str) -> bool:
        address = _address(text)
        return address is not None and any(address in network for network in self.trusted_proxies)
