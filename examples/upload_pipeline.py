#!/usr/bin/env python3
"""An upload pipeline talking to Locality's distributed mode.

1. Uploads an original: asks the scheduler where the tenant's region takes uploads with
   an empty probe (it answers 307 with the region's own ingest endpoint), then sends the
   bytes there. The image never passes through the control plane.
2. Publishes a v1 job envelope to the exchange `locality.submit` on the scheduler's vhost,
   as the tenant's own broker user (routing key = tenant, `user_id` = that user: RabbitMQ
   checks it, and the scheduler takes the tenant from it).
3. Waits on `locality.results` (routing key `TENANT.OUTCOME`) for the result whose
   correlation id is our message id, and prints it as one JSON line.

    pip install pika
    python3 examples/upload_pipeline.py --amqp-url amqp://demo-eu:PASSWORD@127.0.0.1:5672/scheduler \
        --http-url http://127.0.0.1:8080 --api-key demo-eu-key --tenant demo-eu photo.jpg
"""
import argparse
import json
import os
import sys
import urllib.error
import urllib.request
import uuid

import pika


def put(url, api_key, data):
    """One PUT; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, data=data, method="PUT")
    request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def upload(http_url, api_key, key, data):
    """PUT the original where the scheduler says, without sending it to the scheduler:
    an empty probe first (the scheduler answers 307 with the region's ingest endpoint from
    the request alone), then the bytes to that endpoint, with the API key again."""
    url = f"{http_url}/v1/sources/{key}"
    status, headers, body = put(url, api_key, b"")
    if status in (307, 308):
        url = headers["Location"]
        status, headers, body = put(url, api_key, data)
    elif status == 422:
        # This scheduler stores originals itself (locality up): send them to it.
        status, headers, body = put(url, api_key, data)
    if status != 201:
        raise SystemExit(f"upload failed: {status} {body.decode()}")
    return json.loads(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", required=True,
                        help="the scheduler's vhost, as the tenant's broker user "
                             "(a cluster: its nodes' URLs, comma-separated)")
    parser.add_argument("--http-url", required=True, help="the scheduler's HTTP API")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("photo")
    args = parser.parse_args()

    key = f"pipeline/{uuid.uuid4()}{os.path.splitext(args.photo)[1]}"
    with open(args.photo, "rb") as f:
        stored = upload(args.http_url, args.api_key, key, f.read())
    print(f"uploaded {stored['object_key']} to region {stored['region']}", file=sys.stderr)

    # A cluster's nodes as comma-separated URLs: pika tries each in turn.
    nodes = [pika.URLParameters(url.strip()) for url in args.amqp_url.split(",") if url.strip()]
    connection = pika.BlockingConnection(nodes)
    channel = connection.channel()
    channel.confirm_delivery()
    # Listen before publishing, so the result cannot slip past.
    results = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(results, "locality.results", routing_key=f"{args.tenant}.*")

    message_id = str(uuid.uuid4())
    envelope = {
        "v": 1,
        "tenant": args.tenant,
        "source": {"key": key},
        "outputs": [
            {"name": "thumb", "width": 320, "height": 320, "fit": "cover", "format": "jpeg"},
            {"name": "large", "width": 1600, "height": 1600, "format": "webp"},
        ],
    }
    channel.basic_publish(
        exchange="locality.submit",
        routing_key=args.tenant,
        body=json.dumps(envelope).encode(),
        properties=pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message_id,
            user_id=nodes[0].credentials.username,
        ),
        mandatory=True,
    )
    print(f"submitted {message_id}", file=sys.stderr)

    for method, properties, body in channel.consume(
        results, auto_ack=True, inactivity_timeout=args.timeout
    ):
        if method is None:
            raise SystemExit(f"no result within {args.timeout} s")
        if properties.correlation_id == message_id:
            result = json.loads(body)
            print(json.dumps(result))
            connection.close()
            sys.exit(0 if result["outcome"] == "succeeded" else 1)


if __name__ == "__main__":
    main()
