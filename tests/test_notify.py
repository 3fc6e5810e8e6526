"""The notification channels against real receivers on 127.0.0.1: what arrives, and what a failure says (never
a secret: a webhook's path, query or user info, an SMTP password)."""

from __future__ import annotations

import socket
import time
from urllib.parse import quote

import pytest

from resources.notify import (
    DeliveryError,
    Message,
    check_smtp_url,
    check_webhook_url,
    describe_smtp,
    describe_webhook,
    send_email,
    send_webhook,
)
from tests.alert_receivers import SECRET_PATH, SmtpReceiver, WebhookReceiver
from tests.conftest import free_port

SENDER = "llmops-alerts@example.com"
ONCALL = ["oncall@example.com", "lead@example.com"]


def note(notification_id: str = "ntf-0001") -> Message:
    return Message(
        notification_id=notification_id,
        subject="[llmops] OPEN error-spike in llmops-demo: error_rate 0.31 > 0.05 over 1h",
        text="OPEN: error-spike in llmops-demo\nerror_rate 0.31 > 0.05 (120 samples)\n"
             "Report: http://127.0.0.1:3000/report",
        fields={"event": "opened", "rule": "error-spike", "metric": "error_rate", "value": 0.31,
                "threshold": 0.05, "root_causes": [{"description": "tool = search", "npmi": 0.42}],
                "links": {"report": "http://127.0.0.1:3000/report"}},
    )


def assert_no_secret(error: DeliveryError, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in str(error), f"{secret!r} shown in {error}"


# --- webhook ---------------------------------------------------------------------------------------------


def test_a_webhook_notification_arrives_once_with_its_text_id_fields_and_idempotency_key():
    with WebhookReceiver() as hook:
        send_webhook(hook.url, note())
        [request] = hook.wait_for(1)
        assert len(hook.requests) == 1  # recorded before the answer: no second POST came after it
    assert (request["method"], request["path"]) == ("POST", SECRET_PATH)
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Idempotency-Key"] == "ntf-0001"
    body = request["body"]
    assert body["text"] == note().text  # what Slack shows
    assert body["notification_id"] == "ntf-0001"
    assert {k: body[k] for k in note().fields} == note().fields


def test_a_webhook_answering_500_is_a_delivery_error_with_the_status_and_without_the_secret_path():
    with WebhookReceiver(status=500, reply=f"internal error while posting to {SECRET_PATH}") as hook:
        with pytest.raises(DeliveryError) as failure:
            send_webhook(hook.url, note())
        assert len(hook.requests) == 1
    error = failure.value
    assert str(error).startswith(f"webhook http://127.0.0.1:{hook.port} answered 500: internal error")
    assert_no_secret(error, SECRET_PATH, "SECRETTOKEN", "/services/")


def test_a_closed_port_fails_fast_as_connection_refused_and_the_receiver_gets_it_once_it_listens():
    port = free_port()
    hook = WebhookReceiver(port=port)  # not listening yet
    started = time.monotonic()
    with pytest.raises(DeliveryError) as failure:
        send_webhook(hook.url, note(), timeout_s=5)
    assert time.monotonic() - started < 2
    assert str(failure.value) == f"webhook http://127.0.0.1:{port}: connection refused"
    assert_no_secret(failure.value, "SECRETTOKEN", "/services/")

    with hook:  # the same URL once the receiver is up
        send_webhook(hook.url, note())
        assert [r["body"]["notification_id"] for r in hook.wait_for(1)] == ["ntf-0001"]


def test_a_receiver_that_never_answers_times_out_after_timeout_s():
    with socket.socket() as silent:  # listens (the connection is made) but never reads nor answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}{SECRET_PATH}"
        started = time.monotonic()
        with pytest.raises(DeliveryError) as failure:
            send_webhook(url, note(), timeout_s=0.5)
        assert 0.4 < time.monotonic() - started < 3
    assert "timed out" in str(failure.value)
    assert_no_secret(failure.value, "SECRETTOKEN")


def test_user_info_and_query_of_a_webhook_url_are_never_shown():
    port = free_port()
    url = f"http://hookuser:hookpass@127.0.0.1:{port}/hook?token=t0ps3cret"
    assert describe_webhook(url) == f"webhook http://127.0.0.1:{port}"
    assert describe_webhook("https://hooks.slack.com/services/T0/B0/XyZ") == "webhook https://hooks.slack.com"
    with pytest.raises(DeliveryError) as failure:
        send_webhook(url, note())
    assert_no_secret(failure.value, "hookuser", "hookpass", "t0ps3cret", "/hook")
    with pytest.raises(DeliveryError) as failure:  # refused before sending, and the path not repeated
        send_webhook("ftp://files.example.com/SECRETTOKEN", note())
    assert "http:// or https://" in str(failure.value)
    assert_no_secret(failure.value, "SECRETTOKEN")


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "", "http://", "https:///services/T0/B0/X",
                                 "http://example.com:99999/hook", "http://example.com/a b"])
def test_check_webhook_url_refuses_what_cannot_be_posted_to(url):
    problem = check_webhook_url(url)
    assert problem is not None
    assert_no_secret(DeliveryError(problem), "/services/", "/hook", "a b")


@pytest.mark.parametrize("url", ["https://hooks.slack.com/services/T0/B0/XyZ", "http://127.0.0.1:8080/hook"])
def test_check_webhook_url_accepts_http_and_https_urls_with_a_host(url):
    assert check_webhook_url(url) is None


# --- e-mail ----------------------------------------------------------------------------------------------


def test_an_email_arrives_with_subject_from_to_message_id_and_body():
    with SmtpReceiver() as smtp:
        send_email(smtp.url, SENDER, ONCALL, note())
        [mail] = smtp.wait_for(1)
    assert (mail["mail_from"], mail["rcpt_tos"]) == (SENDER, ONCALL)
    message = mail["message"]
    # the subject is folded onto a continuation line (longer than 78 with "Subject: "); Python's parser keeps
    # the fold's space, a mail client shows it without
    assert message["Subject"].strip() == note().subject
    assert message["From"] == SENDER
    assert message["To"] == ", ".join(ONCALL)
    assert message["Message-ID"] == "<ntf-0001@llmops>"
    assert message["Date"]
    assert message.get_content().strip() == note().text


def test_an_email_with_credentials_logs_in_with_the_percent_decoded_password():
    with SmtpReceiver(user="alerts", password="p@ss:w/rd%") as smtp:  # every character the URL must escape
        assert quote("p@ss:w/rd%", safe="") in smtp.url
        send_email(smtp.url, SENDER, ONCALL[:1], note())
        assert [m["message"]["Message-ID"] for m in smtp.wait_for(1)] == ["<ntf-0001@llmops>"]
    assert smtp.logins == ["alerts"]


def test_a_wrong_smtp_password_is_a_delivery_error_that_does_not_hold_it():
    with SmtpReceiver(user="alerts", password="s3cret") as smtp:
        url = f"smtp://alerts:wr0ng-pa55@127.0.0.1:{smtp.port}"
        with pytest.raises(DeliveryError) as failure:
            send_email(url, SENDER, ONCALL, note())
        assert smtp.messages == [] and smtp.logins == []
    # the receiver's 535 answer repeats the credentials: the error keeps the answer, not the password
    assert str(failure.value) == f"smtp 127.0.0.1:{smtp.port}: 535 5.7.8 not a valid login: alerts/***"
    assert_no_secret(failure.value, "wr0ng-pa55", "s3cret")


def test_an_smtp_server_that_wants_a_login_refuses_mail_without_one():
    with SmtpReceiver(user="alerts", password="s3cret") as smtp:
        with pytest.raises(DeliveryError, match=r"530"):
            send_email(f"smtp://127.0.0.1:{smtp.port}", SENDER, ONCALL, note())
        assert smtp.messages == []


@pytest.mark.parametrize("scheme", ["smtp+starttls", "smtps"])
def test_tls_urls_never_fall_back_to_plain_text(scheme):
    with SmtpReceiver(user="alerts", password="s3cret") as smtp:  # offers neither STARTTLS nor TLS
        url = smtp.url.replace("smtp://", f"{scheme}://")
        with pytest.raises(DeliveryError) as failure:
            send_email(url, SENDER, ONCALL, note(), timeout_s=5)
        assert smtp.messages == [] and smtp.logins == []
    assert str(failure.value).startswith(f"{scheme} 127.0.0.1:{smtp.port}: ")
    assert_no_secret(failure.value, "s3cret")


def test_a_refused_recipient_is_a_delivery_error_naming_it():
    with SmtpReceiver(refuse=("gone@example.com",)) as smtp:
        with pytest.raises(DeliveryError, match=r"recipients refused: gone@example\.com \(550"):
            send_email(smtp.url, SENDER, ["oncall@example.com", "gone@example.com"], note())
        assert [m["rcpt_tos"] for m in smtp.wait_for(1)] == [["oncall@example.com"]]  # the others got it
        with pytest.raises(DeliveryError, match=r"every recipient refused: gone@example\.com"):
            send_email(smtp.url, SENDER, ["gone@example.com"], note("ntf-0002"))
        assert len(smtp.messages) == 1


def test_a_closed_smtp_port_is_connection_refused_without_the_password():
    port = free_port()
    with pytest.raises(DeliveryError) as failure:
        send_email(f"smtp://alerts:s3cret@127.0.0.1:{port}", SENDER, ONCALL, note(), timeout_s=5)
    assert str(failure.value) == f"smtp 127.0.0.1:{port}: connection refused"
    with pytest.raises(DeliveryError, match="no recipients"):
        send_email(f"smtp://127.0.0.1:{port}", SENDER, [], note())


def test_describe_smtp_gives_scheme_host_and_port_only():
    assert describe_smtp("smtp://alerts:s3cret@127.0.0.1:2525") == "smtp 127.0.0.1:2525"
    assert describe_smtp("smtp://mail.example.com") == "smtp mail.example.com:25"
    assert describe_smtp("smtp+starttls://u:p@mail.example.com") == "smtp+starttls mail.example.com:587"
    assert describe_smtp("smtps://u:p@mail.example.com") == "smtps mail.example.com:465"


@pytest.mark.parametrize("url", ["smtp://", "not a url", "ftp://x", "http://mail.example.com",
                                 "smtp://:s3cret@mail.example.com", "smtp://mail.example.com/inbox",
                                 "smtp://u:s3cret@mail.example.com:port"])
def test_check_smtp_url_refuses_what_is_not_an_smtp_server(url):
    problem = check_smtp_url(url)
    assert problem is not None and "s3cret" not in problem


@pytest.mark.parametrize("url", ["smtp://127.0.0.1:2525", "smtp+starttls://alerts:p%40ss@mail.example.com",
                                 "smtps://mail.example.com:465/"])
def test_check_smtp_url_accepts_the_three_schemes(url):
    assert check_smtp_url(url) is None
