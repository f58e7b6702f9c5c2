"""sessionsync: the Chalice app.  A routing table, nothing more.

Each route reads its request through ``chalicelib.api.request`` (the
headers, parsed by ``chalicelib.api.headers``), builds the domain's request
with ``chalicelib.domain.validation``, calls one ``SessionService`` method
and returns through ``chalicelib.api.web``, which maps every domain error to
one error shape (RFC 9457 problem details).  No Redis, SQL or boto3 here.

Every Lambda function (the API, the ``authorizer``, the
``persist_changes`` consumer, the ``relay_outbox`` and ``sweep_expired``
schedules) imports this
whole module on its cold start, so it imports at the top only what several
of them use; a module one function alone needs is imported in that
function (``sessionsync bench --sections coldstart``, by_function).
"""
from chalice import AuthResponse, Chalice, IAMAuthorizer, Rate

from chalicelib import config, constants, runtime
from chalicelib.api import headers, web
from chalicelib.api.request import Request
from chalicelib.domain import keys, validation
from chalicelib.observability import logs

# Chalice's own log handler prints plain text; logs.configure() makes every
# sessionsync logger write JSON lines at LOG_LEVEL instead.
app = Chalice(app_name="sessionsync", configure_logs=False)
logs.configure()


@app.middleware("all")
def request_context(event, get_response):
    """Every log and EMF line of an invocation (HTTP, SQS, schedule) carries
    its request id; HTTP responses return it as X-Request-Id."""
    return logs.around_invocation(event, get_response)


@app.middleware("http")
def one_error_shape(event, get_response):
    return web.chalice_errors_in_api_shape(get_response(event), event.method)


# Not named api_key: Chalice names the API's security definition after the
# authorizer and writes API Gateway's own usage-plan key check ("api_key",
# x-api-key) over one of that name, which would deploy the routes without it.
@app.authorizer(ttl_seconds=constants.AUTHORIZER_TTL_SECONDS)
def authorizer(auth_request):
    """Bearer API key; a wrong key is denied (403), a missing one is 401.
    The context names the key's tenant, id and scopes (routes check the
    scope they need: chalicelib.api.request); the principal is the key id,
    for the usage plan chosen per key."""
    from chalicelib.api import auth  # hashlib, hmac and the key cache: the authorizer's only

    caller = auth.identify(runtime.api_keys, auth_request.token)
    if caller is not None:
        return AuthResponse(routes=["*"], principal_id=caller.key_id, context=caller.to_context())
    return AuthResponse(routes=[], principal_id="anonymous")


# SESSIONSYNC_AUTH=iam (a deploy option) puts API Gateway's SigV4 check in front instead.
session_auth = IAMAuthorizer() if config.auth_mode() == "iam" else authorizer


@app.route("/sessions", methods=["POST"], authorizer=session_auth)
@web.handles_errors
def create_session():
    request = Request(app.current_request)
    sessions = runtime.sessions(request.caller(keys.WRITE))
    keyed = request.idempotency("/sessions")
    create = validation.create_request(request.body, runtime.settings().max_state_bytes,
                                       default_id=keyed.session_id() if keyed else None)
    session = sessions.create(create, keyed)
    return web.session_response(session, 201,
                                Location=web.session_url(request.context, 1, session.session_id))


@app.route("/sessions/{session_id}", methods=["GET"], authorizer=session_auth)
@web.handles_errors
def get_session(session_id):
    request = Request(app.current_request)
    sessions = runtime.sessions(request.caller(keys.READ))
    condition = request.if_none_match
    read = sessions.get_accepting_stale(validation.session_id(session_id), request.max_stale)
    source = web.read_headers(read.recovered, read.stale_age)
    if condition is not None and condition.matches(read.session.version):
        return web.not_modified(read.session, **source)
    return web.session_response(read.session, **source)


@app.route("/sessions/{session_id}", methods=["PUT"], authorizer=session_auth)
@web.handles_errors
def update_session(session_id):
    request = Request(app.current_request)
    sessions = runtime.sessions(request.caller(keys.WRITE))
    put = validation.put_request(session_id, request.body, if_match=request.if_match,
                                 if_none_match=request.if_none_match,
                                 max_state_bytes=runtime.settings().max_state_bytes)
    keyed = request.idempotency(f"/sessions/{put.session_id}", request.if_match, request.if_none_match)
    if isinstance(put, validation.CreateRequest):  # If-None-Match: *
        with web.precondition("If-None-Match: *", put.session_id, absent_fails=False):
            session = sessions.create(put, keyed)
        return web.session_response(session, 201,
                                    Location=web.session_url(request.context, 2, session.session_id))
    with web.if_match(put.if_match, put.session_id):
        return web.session_response(sessions.update(put, keyed))


# Chalice refuses (415) a body of another Content-Type before the view runs;
# the route checks it strictly (parameters, */*), as Chalice does not.
@app.route("/sessions/{session_id}", methods=["PATCH"], authorizer=session_auth,
           content_types=[headers.MERGE_PATCH])
@web.handles_errors
def patch_session(session_id):
    request = Request(app.current_request)
    sessions = runtime.sessions(request.caller(keys.WRITE))
    patch = validation.patch_request(session_id, request.merge_patch(), if_match=request.if_match,
                                     max_state_bytes=runtime.settings().max_state_bytes)
    keyed = request.idempotency(f"/sessions/{patch.session_id}", request.if_match)
    with web.if_match(patch.if_match, patch.session_id):
        return web.session_response(sessions.patch(patch, keyed))


@app.route("/sessions/{session_id}", methods=["DELETE"], authorizer=session_auth)
@web.handles_errors
def delete_session(session_id):
    request = Request(app.current_request)
    sessions = runtime.sessions(request.caller(keys.WRITE))
    sid = validation.session_id(session_id)
    condition = request.if_match
    keyed = request.idempotency(f"/sessions/{sid}", condition)
    with web.if_match(condition, sid):
        deleted = sessions.delete(sid, condition.version if condition else None, keyed)
    return web.no_content(deleted)


@app.route("/sessions/{session_id}/touch", methods=["POST"], authorizer=session_auth)
@web.handles_errors
def touch_session(session_id):
    request = Request(app.current_request)
    sessions = runtime.sessions(request.caller(keys.WRITE))
    touch = validation.touch_request(session_id, request.body, request.if_match)
    keyed = request.idempotency(f"/sessions/{touch.session_id}/touch", touch.if_match)
    with web.if_match(touch.if_match, touch.session_id):
        session = sessions.touch(touch.session_id, touch.if_match.version if touch.if_match else None,
                                 touch.ttl_seconds, keyed)
    return web.session_response(session)


@app.route("/sessions/{session_id}/events", methods=["GET"], authorizer=session_auth)
@web.handles_errors
def session_events(session_id):
    request = Request(app.current_request)
    sessions = runtime.sessions(request.caller(keys.ADMIN))
    params = app.current_request.query_params or {}
    page = sessions.history(
        validation.session_id(session_id),
        limit=validation.page_limit(params.get("limit")),
        before_version=validation.history_position(params.get("cursor"), params.get("before_version")))
    return web.history_page_response(page.session_id, page.events, page.next_before_version)


@app.route("/owners/{owner_id}/sessions", methods=["GET"], authorizer=session_auth)
@web.handles_errors
def owner_sessions(owner_id):
    sessions = runtime.sessions(Request(app.current_request).caller(keys.OWNER_ADMIN))
    params = app.current_request.query_params or {}
    page = sessions.owner_sessions(validation.owner_id(owner_id),
                                   limit=validation.page_limit(params.get("limit")),
                                   after=validation.owner_cursor(params.get("cursor")))
    cursor = validation.encode_owner_cursor(page.next_after) if page.next_after else None
    return web.sessions_page_response(page.owner_id, page.sessions, cursor)


@app.route("/owners/{owner_id}/sessions", methods=["DELETE"], authorizer=session_auth)
@web.handles_errors
def revoke_owner_sessions(owner_id):
    """Log out everywhere: ``remaining`` true means call again (time budget)."""
    from chalicelib.service import owners

    sessions = runtime.sessions(Request(app.current_request).caller(keys.OWNER_ADMIN))
    result = sessions.revoke_owner(validation.owner_id(owner_id),
                                   budget_seconds=owners.revoke_budget(app.lambda_context))
    return web.json_response({"owner_id": result.owner_id, "deleted": result.deleted,
                              "blocked": result.blocked, "remaining": result.remaining})


@app.route("/health", methods=["GET"])
@web.handles_errors
def health_check():
    from chalicelib.api import health  # its thread pool: this route's only

    report = health.check_configured(runtime.health_probes)
    return web.json_response(report.to_dict(), report.http_status)


# --- the durable pipeline -----------------------------------------------------

@app.on_sqs_message(queue=config.trigger_queue_name(), batch_size=constants.CONSUMER_BATCH_SIZE,
                    maximum_concurrency=constants.CONSUMER_MAX_CONCURRENCY)
def persist_changes(event):
    """SQS -> PostgreSQL; poison goes to the DLQ.  Safe with or without
    ReportBatchItemFailures on the mapping: when a record must be retried,
    the handled ones are deleted and the handler raises (chalicelib.pipeline.consumer)."""
    return runtime.consumer().handle(event.to_dict())


@app.schedule(Rate(constants.RELAY_SCHEDULE_SECONDS // 60, unit=Rate.MINUTES))
def relay_outbox(event):
    """Ship every committed change to SQS as it commits: hold the relay's
    lease until the next run takes over, or shortly before the timeout
    (chalicelib.pipeline.outbox)."""
    return runtime.relay().serve(budget_seconds=runtime.schedule_budget(event.context)).to_dict()


@app.schedule(Rate(1, unit=Rate.MINUTES))
def sweep_expired(event):
    """Record one session_expired event per session whose lifetime ended
    (chalicelib.pipeline.expiry), until shortly before the timeout."""
    result = runtime.expiry_sweep().run(budget_seconds=runtime.schedule_budget(event.context))
    return {"candidates": result.candidates, "expired": result.expired, "skipped": result.skipped}


@app.schedule(Rate(1, unit=Rate.HOURS))
def purge_sync_events(event):
    """SYNC_EVENTS_RETENTION_DAYS: delete older sync_events rows, never a
    session's latest, in bounded batches, until shortly before the timeout."""
    return runtime.purge_events(budget_seconds=runtime.schedule_budget(event.context)).to_dict()


# --- the deploy ---------------------------------------------------------------

@app.lambda_function(name="run_migrations")
def run_migrations(event, context):
    """The schema's migrations, applied from inside the VPC: the deploy's
    custom resource (answered on its ResponseURL), or ``{"action": "status"}``
    / ``{"action": "migrate"}`` invoked directly (chalicelib.adapters.postgres.migrations)."""
    return runtime.schema_migrations().handle(event)
