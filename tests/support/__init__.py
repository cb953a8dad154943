"""What the tests share that is not a fixture (the fixtures are in the conftest.py files): plain helpers,
imported as `tests.support.<module>`, so that no test imports a conftest or another test module.

    processes.py        a test's child process (output in a log file), `oktopost-connect` as one, run_cli
    stack.py            real processes: a private Redis, a sandbox, the pipeline (shim + workers)
    sandboxes.py        a sandbox process for the sandbox's own tests, and its consent page's decision
    flows.py            driving a flow over real HTTP the way a caller service and a browser do
    ledger.py           the fault suite's ledger: every flow started, what became of it, once
    redis_outage.py     a Redis that a test can stall, kill and restart on the same data
    in_process_shim.py  the shim app in this process for the bad-input tests, each answer checked
    fault_report.py     the fault suite's figures, gathered from every worker (a pytest plugin)
    shim.py             the shim on fakeredis with a recording Oktopost and enqueuer, driven in process
    browsers.py         a hosted flow from the browser's side: its cookie, its page, the selection form
    journey.py          the hosted journey in Chromium: a partner starting a flow, a user going through it
    partner.py          the partner's return page on loopback
    mock_oktopost.py    Oktopost as an httpx MockTransport, answer by answer
    work.py             a task's context on fakeredis, Oktopost's answers, parking's unparker
    clocks.py           FakeClock (moves when told) and ShiftedClock (a process whose clock is off)
    compose_spec.py     docker-compose.yml and .env.example read as the tests of them need
    otlp.py             an OTLP/HTTP trace receiver on loopback, decoding every span it is sent
"""
