"""Delivery of alert notifications: a webhook (Slack-compatible JSON POST) and e-mail (SMTP), stdlib only.

A `Message` carries its `notification_id` to the receiver (`Idempotency-Key` header, `Message-ID`), so a
repeat after a lost answer can be dropped there. Every failure is a `DeliveryError` whose text is safe to
store and show: a webhook URL's path and query (where Slack puts its secret), its user info and an SMTP
password never appear in it; `describe_webhook` and `describe_smtp` give the safe name of an address.
Timeouts apply to each network operation (connect, send, each read), not to the whole delivery.
"""
from __future__ import annotations

import email.utils
import http.client
import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import SplitResult, unquote, urlsplit

SMTP_SCHEMES = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}  # scheme: default port


@dataclass(frozen=True)
class Message:
    notification_id: str  # idempotency key: sent along so a receiver can drop a repeat
    subject: str  # one line
    text: str  # plain-text body
    fields: dict  # structured JSON-able facts (event, rule, metric, value, threshold, root_causes, links...)


class DeliveryError(Exception):
    """A notification could not be delivered; the message says why and never holds a secret (URL path/query,
    password)."""


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):  # longest first: no leftovers
        text = text.replace(secret, "***")
    return text


def _said(answer: bytes | str) -> str:
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
    return " ".join(text.split())


def _refused(recipients: dict) -> str:
    return ", ".join(f"{to} ({code} {_said(answer)})" for to, (code, answer) in recipients.items())


def _reason(exc: BaseException) -> str:
    """A network failure in a few words; the OS errors' own texts hold no address."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return _reason(exc.reason)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_said(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"every recipient refused: {_refused(exc.recipients)}"
    if isinstance(exc, UnicodeError):  # its text quotes the offending characters, which may be a password's
        return "a user, password or address is not ASCII"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url.strip())
        parts.port  # raises ValueError when the port is not a number in range
    except ValueError:
        return None
    return parts


def _host_port(parts: SplitResult, port: int | None) -> str:
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    return f"{host}:{port}" if port is not None else str(host)


# --- webhook ---------------------------------------------------------------------------------------------


def check_webhook_url(url: str) -> str | None:
    """None if `url` can be POSTed to, else the problem (in words that do not repeat the URL)."""
    parts = _split(url)
    if parts is None:
        return "the webhook URL is malformed (bad port?)"
    if parts.scheme not in ("http", "https"):
        return "the webhook URL must start with http:// or https://"
    if not parts.hostname:
        return "the webhook URL has no host"
    if any(c.isspace() or ord(c) < 32 for c in url.strip()):
        return "the webhook URL contains spaces or control characters"
    return None


def describe_webhook(url: str) -> str:
    """The webhook's name, safe to log: scheme and host (and port when given); no user info, path or query."""
    parts = _split(url)
    if parts is None or not parts.hostname:
        return "webhook (malformed URL)"
    return f"webhook {parts.scheme}://{_host_port(parts, parts.port)}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302 with a GET without the body and call that delivered; a redirect is not an
    # answer a webhook gives, so it is reported like any other non-2xx.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def send_webhook(url: str, message: Message, timeout_s: float = 10.0) -> None:
    """POST the message as JSON (Slack's incoming webhooks read "text" and ignore the rest); any 2xx is
    delivered, anything else raises `DeliveryError`."""
    name = describe_webhook(url)
    if problem := check_webhook_url(url):
        raise DeliveryError(f"{name}: {problem}")
    parts = urlsplit(url.strip())
    # what must not show if a library or the receiver echoes the request: all after the host, the user info
    userinfo = parts.netloc.rpartition("@")[0]
    secrets = [s for s in (url.strip(), parts.path, unquote(parts.path), parts.query, userinfo,
                           unquote(parts.password or "")) if s not in ("", "/")]
    # text and notification_id win over same-named fields: Slack shows "text", receivers dedupe on the id
    body = {**message.fields, "text": message.text, "notification_id": message.notification_id}
    request = urllib.request.Request(
        url.strip(), data=json.dumps(body, default=str).encode(), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": message.notification_id})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout_s) as answer:
            answer.read()  # drain, so the receiver's answer is complete before the connection closes
    except urllib.error.HTTPError as exc:  # a non-2xx answer: HTTPErrorProcessor raises for all of them
        try:
            said = _said(exc.read(4096))[:200]
        except Exception:  # noqa: BLE001 - the status says enough when the body cannot be read
            said = ""
        problem = f"{name} answered {exc.code}" + (f": {said}" if said else "")
        raise DeliveryError(_scrub(problem, secrets)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # OSError: URLError, refused, timeouts, DNS; HTTPException: a garbled answer; ValueError: a header
        # value http.client refuses. `from None`: a chained exception's text may hold the URL.
        raise DeliveryError(_scrub(f"{name}: {_reason(exc)}", secrets)) from None


# --- e-mail ----------------------------------------------------------------------------------------------


def check_smtp_url(smtp_url: str) -> str | None:
    """None if `smtp_url` is a usable smtp://, smtp+starttls:// or smtps:// URL, else the problem (without
    the password)."""
    parts = _split(smtp_url)
    if parts is None:
        return "the SMTP URL is malformed (bad port?)"
    if parts.scheme not in SMTP_SCHEMES:
        return "the SMTP URL must start with smtp://, smtp+starttls:// or smtps://"
    if not parts.hostname:
        return "the SMTP URL has no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "the SMTP URL has a path or query: only smtp://[user[:password]@]host[:port] is understood"
    if parts.password is not None and not parts.username:
        return "the SMTP URL has a password but no user"
    return None


def describe_smtp(smtp_url: str) -> str:
    """The SMTP server's name, safe to log: e.g. "smtp 127.0.0.1:2525" (scheme, host, port; no user or
    password)."""
    parts = _split(smtp_url)
    if parts is None or not parts.hostname:
        return "smtp (malformed URL)"
    return f"{parts.scheme or 'smtp'} {_host_port(parts, parts.port or SMTP_SCHEMES.get(parts.scheme, 25))}"


def _email(sender: str, recipients: list[str], message: Message) -> EmailMessage:
    mail = EmailMessage()
    mail["Subject"] = " ".join(message.subject.split())  # one line: a line break would end the header
    mail["From"] = sender
    mail["To"] = ", ".join(recipients)
    mail["Date"] = email.utils.formatdate(localtime=True)
    mail["Message-ID"] = f"<{message.notification_id}@llmops>"  # the receiver's key to drop a repeat
    mail.set_content(message.text)
    return mail


def send_email(smtp_url: str, sender: str, recipients: list[str], message: Message,
               timeout_s: float = 10.0) -> None:
    """Send the message as a plain-text e-mail; raises `DeliveryError` unless every recipient was accepted."""
    name = describe_smtp(smtp_url)
    if problem := check_smtp_url(smtp_url):
        raise DeliveryError(f"{name}: {problem}")
    if not recipients:
        raise DeliveryError(f"{name}: no recipients")
    parts = urlsplit(smtp_url.strip())
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    secrets = [password, parts.password or ""]
    port = parts.port or SMTP_SCHEMES[parts.scheme]
    try:
        mail = _email(sender, recipients, message)
        context = ssl.create_default_context()
        if parts.scheme == "smtps":
            server = smtplib.SMTP_SSL(parts.hostname, port, timeout=timeout_s, context=context)
        else:
            server = smtplib.SMTP(parts.hostname, port, timeout=timeout_s)
        try:
            if parts.scheme == "smtp+starttls":
                server.starttls(context=context)  # raises when not offered: never fall back to plain text
            if user:
                server.login(user, password)
            refused = server.send_message(mail, from_addr=sender, to_addrs=recipients)
        finally:
            try:
                server.quit()
            except OSError:  # sent or not, the answer to QUIT changes nothing
                server.close()
    except (OSError, ValueError) as exc:  # smtplib.SMTPException is an OSError; ValueError: a bad header
        raise DeliveryError(_scrub(f"{name}: {_reason(exc)}", secrets)) from None
    if refused:  # accepted for some recipients only: say who did not get it
        raise DeliveryError(_scrub(f"{name}: recipients refused: {_refused(refused)}", secrets))
