"""`taskweave-planner-node`: an instruction in, a planner drives skills over ROS 2, progress out as JSON.

Instructions arrive on `/taskweave/instruction`; each one runs a planner episode in a worker
thread (never inside a callback) against a `RosSkillExecutor`. `/taskweave/status` (reliable,
transient local: late joiners get the newest) carries JSON:

    state           waiting | planning | executing | succeeded | failed | error
    instruction, planner, llm, executor
    plan            skill calls tried so far, in order
    current_skill   the skill running now ("" between skills)
    steps           [{call, success, failure, message}]
    failures        failed skill calls so far
    success         final task success (null until the end)
    progress        goal progress from the state topic
    error           why the episode stopped early, if it did
    record          the planner's EpisodeRecord (at the end)
"""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Callable, Optional

from rclpy.node import Node
from std_msgs.msg import String

from taskweave.ros.common import Latest, declare_params, make_pub, make_sub, run_single_node
from taskweave.ros.params import PLANNER_PARAMETERS
from taskweave.ros.ros_executor import ResultStore, RosSkillExecutor
from taskweave.ros.state_json import decode_state

# plan_fn(planner, llm, executor, trace) -> EpisodeRecord (or a dict with at least "success")
PlanFn = Callable[[str, str, RosSkillExecutor, Callable[[dict], None]], object]


def run_planner(planner: str, llm: str, executor: RosSkillExecutor, trace=None):
    """The default plan_fn: one episode of a taskweave planner with an LLM spec on the executor."""
    from taskweave.planning import make_planner
    from taskweave.planning.llm import make_llm
    kw = {}
    if llm.split(":", 1)[0] in ("offline", "llama") and executor.seed is not None:
        kw["seed"] = int(executor.seed)   # as `taskweave plan` seeds it
    client = make_llm(llm, **kw)
    try:
        return make_planner(planner).run(executor, client, task=executor.task_name, seed=executor.seed,
                                         backend=executor.backend_name, trace=trace)
    finally:
        client.close()


class PlannerNode(Node):
    """Runs a planner episode per instruction and publishes its progress on /taskweave/status."""

    def __init__(self, context=None, parameter_overrides=None, cli_args=None, plan_fn: Optional[PlanFn] = None):
        """plan_fn: replaces `run_planner` (tests, or another planning stack)."""
        super().__init__("taskweave_planner", context=context, parameter_overrides=parameter_overrides or [],
                         cli_args=cli_args)
        self.params = declare_params(self, PLANNER_PARAMETERS)
        if self.params["executor"] not in ("scripted", "policy"):
            raise ValueError(f"executor must be scripted or policy, got {self.params['executor']!r}")
        self.plan_fn = plan_fn or run_planner
        self.state, self.results, self.stop = Latest(), ResultStore(), threading.Event()
        self.done = Latest()          # the newest /taskweave/skill_done of the policy node (its done head)
        self.pubs = {t: make_pub(self, t) for t in (
            "/taskweave/skill_request", "/taskweave/current_skill", "/taskweave/status")}
        make_sub(self, "/taskweave/symbolic_state", self._on_state)
        make_sub(self, "/taskweave/skill_result", self._on_result)
        make_sub(self, "/taskweave/skill_done", self._on_done)
        make_sub(self, "/taskweave/instruction", self._on_instruction)
        self.instructions: queue.Queue = queue.Queue()
        self.status: dict = {}
        self.episodes: list = []
        self._set_status(state="waiting", instruction="", plan=[], current_skill="", steps=[], failures=0,
                         success=None, progress=None, error=None)
        self.worker = threading.Thread(target=self._work, name="taskweave-planner", daemon=True)
        self.worker.start()

    # ---- inputs ----------------------------------------------------------------------------
    def _on_state(self, msg) -> None:
        d = decode_state(msg.data)
        if d is not None:
            self.state.set(d)

    def _on_result(self, msg) -> None:
        d = decode_state(msg.data)
        if d is not None:
            self.results.add(d)

    def _on_done(self, msg) -> None:
        d = decode_state(msg.data)
        if d is not None:
            self.done.set(d)

    def _on_instruction(self, msg) -> None:
        text = msg.data.strip()
        if text:
            self.get_logger().info(f"instruction: {text!r}")
            self.instructions.put(text)

    # ---- what the executor calls -------------------------------------------------------------
    def publish_request(self, d: dict) -> None:
        """Send a scripted skill request to the sim."""
        self._publish("/taskweave/skill_request", json.dumps(d))

    def publish_current(self, text: str) -> None:
        """Name the skill the policy node should run ('' = none)."""
        self._publish("/taskweave/current_skill", text)
        self._set_status(current_skill=text)

    def results_wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until a sim subscribes to skill requests (a request sent earlier would be lost)."""
        t_end = time.monotonic() + timeout
        while self.pubs["/taskweave/skill_request"].get_subscription_count() == 0:
            if time.monotonic() > t_end or self.stop.is_set():
                return False
            time.sleep(0.05)
        return True

    # ---- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                text = self.instructions.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self.run_instruction(text)
            except Exception as e:  # a broken episode must not kill the node
                self.get_logger().error(f"episode failed: {type(e).__name__}: {e}")
                self._set_status(state="error", error=f"{type(e).__name__}: {e}", current_skill="")

    def run_instruction(self, text: str) -> dict:
        """Run one planner episode for an instruction (blocking); returns the final status."""
        p = self.params
        self._set_status(state="planning", instruction=text, plan=[], current_skill="", steps=[], failures=0,
                         success=None, progress=None, error=None, record=None)
        if self.state.wait_for(lambda d: d, p["state_timeout"], self.stop) is None:
            self._set_status(state="error", error="no /taskweave/symbolic_state received")
            return self.status
        ex = _StatusExecutor(self, RosSkillExecutor(self, p["executor"], text, p["skill_timeout"],
                                                    p["settle_ticks"], log=self.get_logger().info))
        rec = self.plan_fn(p["planner"], p["llm"], ex, self._trace)
        rec = rec.to_dict() if hasattr(rec, "to_dict") else dict(rec)
        self.episodes.append(rec)
        ok = bool(rec.get("success"))
        self._set_status(state="succeeded" if ok else "failed", success=ok, current_skill="",
                         progress=rec.get("progress", ex.progress()), error=rec.get("error"), record=rec)
        self.get_logger().info(f"episode {'succeeded' if ok else 'failed'}: {text!r}")
        return self.status

    def _trace(self, event: dict) -> None:
        if event.get("event") in ("note", "error"):
            self.get_logger().info(f"planner: {event.get('text', '')}")

    def _set_status(self, **fields) -> None:
        self.status.update(fields, planner=self.params["planner"], llm=self.params["llm"],
                           executor=self.params["executor"], stamp=time.time())
        self._publish("/taskweave/status", json.dumps(self.status, default=str))

    def _publish(self, topic: str, text: str) -> None:
        m = String()
        m.data = text
        self.pubs[topic].publish(m)

    def close(self) -> None:
        """Stop the worker (an episode in progress is interrupted) and wait for it."""
        self.stop.set()
        self.worker.join(timeout=5.0)


class _StatusExecutor:
    """Wraps an executor to publish the current skill and each outcome on /taskweave/status."""

    def __init__(self, node: PlannerNode, inner: RosSkillExecutor):
        self._node, self._inner = node, inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def execute(self, call):
        """Run the call through the wrapped executor, reporting before and after."""
        n = self._node
        n._set_status(state="executing", current_skill=str(call), plan=n.status["plan"] + [str(call)])
        r = self._inner.execute(call)
        step = {"call": str(call), "success": r.success, "failure": r.failure, "message": r.message}
        n._set_status(state="planning", current_skill="", steps=n.status["steps"] + [step],
                      failures=n.status["failures"] + int(not r.success), progress=self._safe_progress())
        return r

    def _safe_progress(self):
        try:
            return self._inner.progress()
        except RuntimeError:
            return None


def main(args=None) -> int:
    """Console entry `taskweave-planner-node`: plan each instruction received until Ctrl-C."""
    return run_single_node(lambda: PlannerNode(), args=args if args is not None else sys.argv)


if __name__ == "__main__":
    sys.exit(main())
