"""The seed scenario as a console backend written in Python would drive
patd's JSON API with `requests` (with a Rotate step), plus RFC 7662
introspection as a gateway plugin would call it. Run by tests/api/json_api.rs against a live patd:

    PATD_URL             http://127.0.0.1:<port> (the HTTP listener)
    PATD_CONSOLE_KEY     a caller key with the manage role
    PATD_GATEWAY_NAME    a caller name with the introspect role
    PATD_GATEWAY_KEY     that caller's key

Prints "console scenario: ok" when every step answered as documented.
"""

import datetime
import os
import uuid

import requests

BASE = os.environ["PATD_URL"]
CONSOLE = {"Authorization": "Bearer " + os.environ["PATD_CONSOLE_KEY"]}
GATEWAY = (os.environ["PATD_GATEWAY_NAME"], os.environ["PATD_GATEWAY_KEY"])
TIMEOUT = 10


def check(response, status):
    assert response.status_code == status, (
        f"{response.request.method} {response.request.path_url}: "
        f"{response.status_code} {response.text}"
    )
    return response


def forward_auth(token):
    return requests.get(
        f"{BASE}/v1/forward-auth",
        headers={
            "Authorization": f"Bearer {token}",
            "X-Patd-Caller-Key": GATEWAY[1],
        },
        timeout=TIMEOUT,
    )


def introspect(token, auth=GATEWAY):
    return requests.post(
        f"{BASE}/oauth2/introspect",
        data={"token": token, "token_type_hint": "access_token"},
        auth=auth,
        timeout=TIMEOUT,
    )


def main():
    account = f"py-{uuid.uuid4().hex[:12]}"
    tokens = f"{BASE}/v1/accounts/{account}/tokens"

    # Issue with a note and an expiry.
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    issued = check(
        requests.post(
            tokens,
            json={
                "note": "CI deploy",
                "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "scopes": ["repo:read"],
            },
            headers=CONSOLE,
            timeout=TIMEOUT,
        ),
        201,
    ).json()
    token, info = issued["token"], issued["info"]
    assert info["note"] == "CI deploy" and info["accountId"] == account, info
    got = datetime.datetime.fromisoformat(info["expiresAt"].replace("Z", "+00:00"))
    assert abs((got - expires).total_seconds()) < 2, (got, expires)

    # A gateway lets a request with it through.
    allowed = check(forward_auth(token), 200)
    assert allowed.headers["X-Account-Id"] == account, allowed.headers

    # The console lists it (never the value).
    listed = check(requests.get(tokens, headers=CONSOLE, timeout=TIMEOUT), 200).json()
    assert [t["tokenId"] for t in listed["tokens"]] == [info["tokenId"]], listed
    assert token not in str(listed)

    # RFC 7662, HTTP Basic as client_id:client_secret.
    seen = check(introspect(token), 200).json()
    assert seen["active"] is True and seen["sub"] == account, seen
    assert seen["jti"] == info["tokenId"] and seen["token_type"] == "pat", seen
    assert seen["scope"] == "repo:read", seen
    wrong = introspect(token, auth=(GATEWAY[0], GATEWAY[1] + "x"))
    check(wrong, 401)
    assert wrong.headers["Content-Type"] == "application/problem+json"
    assert "Basic" in wrong.headers["WWW-Authenticate"]
    assert token not in wrong.text

    # Delete one: the gateway refuses it, introspection says inactive.
    second_issued = check(
        requests.post(tokens, json={}, headers=CONSOLE, timeout=TIMEOUT), 201
    ).json()
    second = second_issued["token"]
    check(
        requests.delete(f"{tokens}/{info['tokenId']}", headers=CONSOLE, timeout=TIMEOUT),
        204,
    )
    check(forward_auth(token), 401)
    assert check(introspect(token), 200).json() == {"active": False}
    missing = check(
        requests.delete(f"{tokens}/{info['tokenId']}", headers=CONSOLE, timeout=TIMEOUT),
        404,
    ).json()
    assert missing["code"] == "NOT_FOUND", missing

    # Rotate one (AIP-136 custom method): both work through the grace
    # window; a second Rotate of the same token is refused.
    rotate = f"{tokens}/{second_issued['info']['tokenId']}:rotate"
    rotated = check(
        requests.post(rotate, json={"grace": "600s"}, headers=CONSOLE, timeout=TIMEOUT),
        200,
    ).json()
    successor = rotated["token"]
    assert rotated["info"]["state"] == "ACTIVE", rotated
    check(forward_auth(second), 200)
    check(forward_auth(successor), 200)
    again = check(
        requests.post(rotate, json={}, headers=CONSOLE, timeout=TIMEOUT), 409
    ).json()
    assert again["code"] == "FAILED_PRECONDITION", again

    # Delete all: the rotating token and its successor.
    revoked = check(requests.delete(tokens, headers=CONSOLE, timeout=TIMEOUT), 200).json()
    assert revoked == {"revoked": 2}, revoked
    for ended in (second, successor):
        check(forward_auth(ended), 401)
        assert check(introspect(ended), 200).json() == {"active": False}
    listed = check(requests.get(tokens, headers=CONSOLE, timeout=TIMEOUT), 200).json()
    assert listed["tokens"] == [], listed

    print("console scenario: ok")


if __name__ == "__main__":
    main()
