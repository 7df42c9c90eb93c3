"""The one pull-consumer set-up (scribe_libs.bus.pull_subscribe) that transcribers and
post-processors share, against a real ``nats-server -js``."""

from __future__ import annotations

import nats
from nats.js.api import AckPolicy, DeliverPolicy

from scribe_libs import bus as busmod


async def test_work_queue_consumers_are_explicit_ack_with_the_asked_redelivery(nats_url):
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await busmod.declare(js)
        jobs = await busmod.pull_subscribe(
            js, busmod.jobs_subject("t4"), stream=busmod.JOBS_STREAM, durable=busmod.pool_consumer("t4"),
            ack_wait_seconds=60.0, max_deliver=3, max_ack_pending=-1,
        )
        post = await busmod.pull_subscribe(
            js, busmod.POSTPROCESS_SUBJECT, stream=busmod.POSTPROCESS_STREAM, durable=busmod.POSTPROCESS_CONSUMER,
            ack_wait_seconds=30.0, max_deliver=5,
        )
        job_info = await js.consumer_info(busmod.JOBS_STREAM, "transcriber-t4")
        post_info = await js.consumer_info(busmod.POSTPROCESS_STREAM, "postprocess")
        for info in (job_info, post_info):
            assert info.config.ack_policy == AckPolicy.EXPLICIT
            assert info.config.deliver_policy == DeliverPolicy.ALL
        assert (job_info.config.ack_wait, job_info.config.max_deliver) == (60.0, 3)
        assert job_info.config.filter_subject == "scribe.jobs.t4"
        assert job_info.config.max_ack_pending == -1  # a pool's worker count bounds it
        assert (post_info.config.ack_wait, post_info.config.max_deliver) == (30.0, 5)
        assert post_info.config.max_ack_pending == 1000  # the server's default

        # A second worker binds to the same consumer, whatever it asks for: one delivery among them.
        again = await busmod.pull_subscribe(
            js, busmod.jobs_subject("t4"), stream=busmod.JOBS_STREAM, durable=busmod.pool_consumer("t4"),
            ack_wait_seconds=5.0, max_deliver=9,
        )
        info = await js.consumer_info(busmod.JOBS_STREAM, "transcriber-t4")
        assert (info.config.ack_wait, info.config.max_deliver) == (60.0, 3)
        for sub in (jobs, post, again):
            await sub.unsubscribe()
    finally:
        await nc.close()
