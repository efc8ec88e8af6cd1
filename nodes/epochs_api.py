"""The committee routes of the node API (docs/epochs.md, docs/node-api.md):

    GET  /v1/committee/chain?after=E   the links after epoch E (public)
    POST /v1/committee/proposals       sign a proposed successor (request signed by a proposer key)
    POST /v1/committee/next            adopt signed links (the body certifies itself: no signature)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable

from walrusfs.protocol import AuthError, routes
from walrusfs.protocol.auth import verify_signed
from walrusfs.protocol.chain import CHAIN_VERSION, ChainError, CommitteeLink

from .core import NodeCore, unauthorized
from .epochs import EpochService
from .http import HTTPError, Request, Response, json_response

Handler = Callable[..., Awaitable[Response]]
MAX_PROPOSAL_BODY = 4 << 20  # one link: a committee of thousands of nodes with their certificates
MAX_LINKS_BODY = 64 << 20  # every link of a long-lived network, for a node far behind


class EpochsAPI:
    def __init__(self, core: NodeCore, service: EpochService) -> None:
        self.core = core
        self.service = service

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            routes.COMMITTEE_CHAIN: {"GET": self.chain},
            routes.COMMITTEE_PROPOSALS: {"POST": self.proposal},
            routes.COMMITTEE_NEXT: {"POST": self.next},
        }

    async def chain(self, request: Request) -> Response:
        after = request.query.get("after", "0")
        if not after.isdigit() or len(after) > 19:
            raise HTTPError(400, "bad_query", f"after must be an epoch (an integer >= 0), not {after[:40]!r}")
        chain = self.core.chain
        return json_response({"version": CHAIN_VERSION, "epoch": chain.current.epoch,
                              "links": [link.to_dict() for link in chain.links_after(int(after))]})

    async def proposal(self, request: Request) -> Response:
        proposers = self.core.config.epochs.proposers
        if not proposers:
            raise HTTPError(403, "no_proposers", "this node's config lists no [epochs] proposers, so it signs no "
                            "proposal: add the operator's public key to its config and restart it")
        try:
            signed = verify_signed(request.headers.get("authorization"), request.method, request.target,
                                   self.core.node_id, self.core.public_key_bytes, proposers,
                                   "one of this node's proposers ([epochs] proposers in its config)",
                                   replay=self.core.replay)
        except AuthError as error:
            raise unauthorized(error) from None
        body = await request.read_body(MAX_PROPOSAL_BODY)
        self.core.check_body(signed, body)
        link = _parse_link(bytes(body))
        signature = await self.service.sign_proposal(link)
        return json_response({"node_id": self.core.node_id, "epoch": link.epoch,
                              "signature": base64.b64encode(signature).decode()})

    async def next(self, request: Request) -> Response:
        body = await request.read_body(MAX_LINKS_BODY)
        try:
            data = json.loads(body)
            if data["version"] != CHAIN_VERSION:
                raise HTTPError(400, "bad_links", f"links version {data['version']} is not one this node reads "
                                f"({CHAIN_VERSION}): upgrade walrusfs on the node")
            links = [CommitteeLink.from_dict(entry) for entry in data["links"]]
        except HTTPError:
            raise
        except (ValueError, KeyError, TypeError, ChainError) as error:
            raise HTTPError(400, "bad_links", f"not a list of committee links ({{\"version\": 1, \"links\": "
                            f"[...]}}): {error}") from None
        added = await self.service.adopt(links)
        return json_response({"epoch": self.core.committee.epoch, "adopted": [c.epoch for c in added]})


def _parse_link(body: bytes) -> CommitteeLink:
    try:
        return CommitteeLink.from_json(body)
    except ChainError as error:
        raise HTTPError(400, "bad_link", f"the proposal must be one unsigned committee link: {error}") from None
