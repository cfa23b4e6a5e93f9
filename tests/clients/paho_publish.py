"""Publishes numbered readings with paho-mqtt, reconnecting half way.

Run by tests/tests/devices/clients.rs. Prints "acknowledged N": publishes
whose flow completed (PUBACK for QoS 1, PUBCOMP for QoS 2, sent for QoS 0).
With --clean off, the client keeps its session across the reconnect (3.1.1
clean session 0; 5: clean start 0 and a session expiry of an hour).
"""

import argparse
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", choices=["311", "5"], required=True)
    p.add_argument("--qos", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--clean", action="store_true")
    a = p.parse_args()

    v5 = a.version == "5"
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    kwargs = {} if v5 else {"clean_session": a.clean}
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=a.device,
        protocol=protocol,
        **kwargs,
    )

    def connect():
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if not a.clean:
                props.SessionExpiryInterval = 3600
            client.connect("127.0.0.1", a.port, keepalive=30, clean_start=a.clean, properties=props)
        else:
            client.connect("127.0.0.1", a.port, keepalive=30)
        client.loop_start()

    acknowledged = 0
    connect()
    topic = "sensors/%s/v" % a.device
    half = a.count // 2
    for i in range(a.count):
        if i == half:
            client.disconnect()
            client.loop_stop()
            connect()
        info = client.publish(topic, str(i), qos=a.qos)
        info.wait_for_publish(timeout=10)
        if info.is_published():
            acknowledged += 1
    client.disconnect()
    client.loop_stop()
    print("acknowledged %d" % acknowledged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
