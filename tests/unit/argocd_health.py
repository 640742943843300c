"""Running the Argo CD health check (manifests/gitops/argocd/health.lua) the way Argo CD does, with lupa."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

HEALTH_LUA = Path(__file__).resolve().parents[2] / "manifests" / "gitops" / "argocd" / "health.lua"
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


# gopher-lua, Argo CD's interpreter, implements Lua 5.1; 5.4 too, so the script leans on neither's quirks.
LUA_MODULES = ["lupa.lua51", "lupa.lua54"]


def to_lua(lua: Any, value: Any) -> Any:
    """JSON-like Python values as Lua values, the way Argo CD decodes an object: tables all the way down,
    lists 1-indexed, nulls absent."""
    if isinstance(value, dict):
        return lua.table_from({key: to_lua(lua, item) for key, item in value.items() if item is not None})
    if isinstance(value, list | tuple):
        return lua.table_from([to_lua(lua, item) for item in value])
    return value


def argo_health(lua_module: Any, obj: dict[str, Any]) -> tuple[str, str]:
    """(hs.status, hs.message) of the health check for one object; lua_module is lupa.lua51 or lupa.lua54."""
    lua = lua_module.LuaRuntime()
    # Scripts from argocd-cm run without the string, math, io and debug libraries (util/lua/lua.go opens
    # only package, base, table and a safe os), so strings have no methods either: take all that away so a
    # script that needs any of it fails here too.
    lua.execute(
        'debug.setmetatable("", nil)\n'
        "string, math, io, debug, utf8, coroutine, os = nil, nil, nil, nil, nil, nil, nil"
    )
    lua.globals().obj = to_lua(lua, obj)
    hs = lua.execute(HEALTH_LUA.read_text())
    status, message = hs["status"], hs["message"]
    assert status in ARGO_HEALTH
    assert isinstance(message, str) and message
    return status, message


def argo_health_everywhere(obj: dict[str, Any]) -> tuple[str, str]:
    """The same answer from Lua 5.1 (gopher-lua's dialect) and 5.4, or an assertion error."""
    answers = {argo_health(importlib.import_module(name), obj) for name in LUA_MODULES}
    assert len(answers) == 1, answers
    return answers.pop()
