"""What the tests stand on, apart from the tests themselves: the real services started and
stopped (`services`), the stand-ins they run as scripts (`atomic_moto`, `http_proxy`,
`cloud_cli`, `cave_service`), worker processes (`forked_workers`), and shared helpers
(`helpers`, `cloud`, `readme`, `terminal`, `sqs_faults`, `enqueue_sources`). Task functions the
tests queue stay beside the tests (`tests.tasks`, `tests.tq_tasks`): messages name them."""
