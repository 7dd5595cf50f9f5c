"""RabbitMQ's seven tutorials (https://www.rabbitmq.com/tutorials, the Python/pika
versions), as their programs are written, against the broker's AMQP port.

The tutorials' programs run forever (`start_consuming`); here each consumer stops once it
has what its tutorial sends, and the producer and consumer programs of one tutorial run as
two threads, each with its own connection, as two processes would. The only changes to
the tutorials' code are the connection parameters (the port is the test broker's) and
those stops. Prints one JSON object: what each program received.

usage: tutorials.py TUTORIAL PORT
"""

import json
import sys
import threading
import time
import uuid

import pika

TUTORIAL, PORT = sys.argv[1], int(sys.argv[2])
# Every wait below is bounded: a broker that never answers fails the run, not hangs it.
DEADLINE = time.monotonic() + 60


def connect():
    return pika.BlockingConnection(
        pika.ConnectionParameters(host="127.0.0.1", port=PORT, blocked_connection_timeout=30)
    )


def consume_until(channel, done):
    """`start_consuming`, stopped once `done()` holds (or at the deadline)."""
    while not done():
        if time.monotonic() > DEADLINE:
            raise TimeoutError("the tutorial's consumer did not get its messages in time")
        channel.connection.process_data_events(time_limit=0.05)


def run_both(consumer, producer):
    """Starts the consumer program, then (once it is listening) the producer."""
    ready = threading.Event()
    result = {}
    errors = []

    def consumer_thread():
        try:
            result.update(consumer(ready))
        except Exception as e:  # reported below, with the producer's
            errors.append(f"consumer: {e!r}")
            ready.set()

    thread = threading.Thread(target=consumer_thread)
    thread.start()
    if not ready.wait(timeout=30):
        errors.append("consumer never got ready")
    else:
        try:
            result.update(producer() or {})
        except Exception as e:
            errors.append(f"producer: {e!r}")
    thread.join(timeout=70)
    if errors:
        raise RuntimeError("; ".join(errors))
    return result


# Tutorial 1, "Hello World!": send.py and receive.py.
def hello_world():
    def receive(ready):
        connection = connect()
        channel = connection.channel()
        channel.queue_declare(queue="hello")
        got = []

        def callback(ch, method, properties, body):
            got.append(body.decode())

        channel.basic_consume(queue="hello", on_message_callback=callback, auto_ack=True)
        ready.set()
        consume_until(channel, lambda: len(got) == 1)
        connection.close()
        return {"received": got}

    def send():
        connection = connect()
        channel = connection.channel()
        channel.queue_declare(queue="hello")
        channel.basic_publish(exchange="", routing_key="hello", body="Hello World!")
        connection.close()

    return run_both(receive, send)


# Tutorial 2, "Work queues": new_task.py and two worker.py (fair dispatch, prefetch 1).
def work_queues():
    tasks = [f"task {i}{'.' * (i % 3)}" for i in range(10)]
    done = []
    lock = threading.Lock()

    def worker(name, ready):
        connection = connect()
        channel = connection.channel()
        channel.queue_declare(queue="task_queue", durable=True)

        def callback(ch, method, properties, body):
            with lock:
                done.append({"worker": name, "task": body.decode(),
                             "persistent": properties.delivery_mode == 2})
            ch.basic_ack(delivery_tag=method.delivery_tag)

        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue="task_queue", on_message_callback=callback)
        ready.set()
        consume_until(channel, lambda: len(done) >= len(tasks))
        connection.close()

    def workers(ready):
        second_ready = threading.Event()
        second = threading.Thread(target=worker, args=("w2", second_ready))
        second.start()
        second_ready.wait(timeout=30)
        worker("w1", ready)
        second.join(timeout=70)
        return {"done": done}

    def new_task():
        connection = connect()
        channel = connection.channel()
        channel.queue_declare(queue="task_queue", durable=True)
        for message in tasks:
            channel.basic_publish(
                exchange="",
                routing_key="task_queue",
                body=message,
                properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
            )
        connection.close()
        return {"sent": tasks}

    return run_both(workers, new_task)


def subscriber(exchange, exchange_type, binding_keys, expect):
    """receive_logs*.py: an exclusive server-named queue bound to `exchange`."""

    def receive(ready):
        connection = connect()
        channel = connection.channel()
        channel.exchange_declare(exchange=exchange, exchange_type=exchange_type)
        result = channel.queue_declare(queue="", exclusive=True)
        queue_name = result.method.queue
        for binding_key in binding_keys:
            channel.queue_bind(exchange=exchange, queue=queue_name, routing_key=binding_key)
        got = []

        def callback(ch, method, properties, body):
            got.append([method.routing_key, body.decode()])

        channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
        ready.set()
        consume_until(channel, lambda: len(got) >= expect)
        connection.close()
        return {"queue": queue_name, "received": got}

    return receive


def emitter(exchange, exchange_type, messages):
    """emit_log*.py: one publish per (routing key, message)."""

    def emit():
        connection = connect()
        channel = connection.channel()
        channel.exchange_declare(exchange=exchange, exchange_type=exchange_type)
        for routing_key, message in messages:
            channel.basic_publish(exchange=exchange, routing_key=routing_key, body=message)
        connection.close()

    return emit


# Tutorial 3, "Publish/Subscribe": emit_log.py and receive_logs.py (fanout).
def publish_subscribe():
    messages = [("", "info: Hello World!"), ("", "warning: disk")]
    return run_both(subscriber("logs", "fanout", [""], 2), emitter("logs", "fanout", messages))


# Tutorial 4, "Routing": emit_log_direct.py and receive_logs_direct.py warning error.
def routing():
    messages = [("info", "i"), ("warning", "w"), ("error", "e"), ("debug", "d"), ("error", "e2")]
    receive = subscriber("direct_logs", "direct", ["warning", "error"], 3)
    return run_both(receive, emitter("direct_logs", "direct", messages))


# Tutorial 5, "Topics": emit_log_topic.py and receive_logs_topic.py "kern.*" "*.critical".
def topics():
    messages = [
        ("kern.critical", "A critical kernel error"),
        ("kern.info", "kernel info"),
        ("cron.critical", "cron is down"),
        ("cron.info.extra", "nothing"),
        ("kern", "too short"),
    ]
    receive = subscriber("topic_logs", "topic", ["kern.*", "*.critical"], 3)
    return run_both(receive, emitter("topic_logs", "topic", messages))


def fib(n):
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


# Tutorial 6, "RPC": rpc_server.py and rpc_client.py (callback queue, correlation ids);
# `reply_to` = `direct` uses RabbitMQ's direct reply-to instead of a callback queue.
def rpc(reply_to):
    def rpc_server(ready):
        connection = connect()
        channel = connection.channel()
        channel.queue_declare(queue="rpc_queue")
        served = []

        def on_request(ch, method, props, body):
            n = int(body)
            response = fib(n)
            ch.basic_publish(
                exchange="",
                routing_key=props.reply_to,
                properties=pika.BasicProperties(correlation_id=props.correlation_id),
                body=str(response),
            )
            ch.basic_ack(delivery_tag=method.delivery_tag)
            served.append(n)

        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(queue="rpc_queue", on_message_callback=on_request)
        ready.set()
        consume_until(channel, lambda: len(served) >= 3)
        connection.close()
        return {"served": served}

    class FibonacciRpcClient(object):
        def __init__(self):
            self.connection = connect()
            self.channel = self.connection.channel()
            if reply_to == "direct":
                self.callback_queue = "amq.rabbitmq.reply-to"
            else:
                result = self.channel.queue_declare(queue="", exclusive=True)
                self.callback_queue = result.method.queue
            self.channel.basic_consume(
                queue=self.callback_queue,
                on_message_callback=self.on_response,
                auto_ack=True,
            )
            self.response = None
            self.corr_id = None

        def on_response(self, ch, method, props, body):
            if self.corr_id == props.correlation_id:
                self.response = body

        def call(self, n):
            self.response = None
            self.corr_id = str(uuid.uuid4())
            self.channel.basic_publish(
                exchange="",
                routing_key="rpc_queue",
                properties=pika.BasicProperties(
                    reply_to=self.callback_queue,
                    correlation_id=self.corr_id,
                ),
                body=str(n),
            )
            while self.response is None:
                if time.monotonic() > DEADLINE:
                    raise TimeoutError("no RPC response")
                self.connection.process_data_events(time_limit=0.05)
            return int(self.response)

    def rpc_client():
        fibonacci_rpc = FibonacciRpcClient()
        answers = {str(n): fibonacci_rpc.call(n) for n in (10, 20, 1)}
        fibonacci_rpc.connection.close()
        return {"answers": answers, "callback_queue": fibonacci_rpc.callback_queue}

    return run_both(rpc_server, rpc_client)


# Tutorial 7, "Publisher confirms" (BlockingConnection: confirm_delivery, then each
# basic_publish returns once confirmed and raises on a nack or, with mandatory, a return).
def publisher_confirms():
    connection = connect()
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue="confirmed", durable=True)
    confirmed = 0
    for i in range(50):
        channel.basic_publish(
            exchange="",
            routing_key="confirmed",
            body=f"message {i}",
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
            mandatory=True,
        )
        confirmed += 1
    unroutable = None
    try:
        channel.basic_publish(exchange="", routing_key="no-such-queue", body="lost",
                              mandatory=True)
        unroutable = "confirmed"
    except pika.exceptions.UnroutableError:
        unroutable = "returned"
    count = channel.queue_declare(queue="confirmed", durable=True, passive=True)
    connection.close()
    return {"confirmed": confirmed, "unroutable": unroutable,
            "message_count": count.method.message_count}


TUTORIALS = {
    "hello_world": hello_world,
    "work_queues": work_queues,
    "publish_subscribe": publish_subscribe,
    "routing": routing,
    "topics": topics,
    "rpc": lambda: rpc("queue"),
    "rpc_direct_reply_to": lambda: rpc("direct"),
    "publisher_confirms": publisher_confirms,
}

print(json.dumps(TUTORIALS[TUTORIAL]()))
