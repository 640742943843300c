-- Argo CD health check for feedbackloop.dev/FeedbackLoop (v1alpha1).
--
-- Installed as the argocd-cm key resource.customizations.health.feedbackloop.dev_FeedbackLoop;
-- manifests/gitops/argocd/argocd-cm-patch.yaml carries this file byte for byte (a unit test checks it).
-- Argo CD runs scripts from argocd-cm without Lua's string and math libraries (only base, table and a safe
-- os), so this one uses nothing else; useOpenLibs is not needed.
-- It reads only what the operator writes (docs/api.md, "Conditions and reasons"): status.observedGeneration
-- and the conditions' observedGeneration, the conditions Ready, Healthy, Retraining, Validated, RolledOut
-- and Degraded, status.activeRetrain, status.rollout, status.currentModel and status.recommendedVersion.
--
-- The first rule that matches decides:
--   1. no status yet, or metadata.generation not observed yet       -> Progressing
--   2. Ready=False (InvalidSpec, Forbidden, PrometheusUnreachable...) -> Degraded
--   3. spec.suspend                                                   -> Suspended
--   4. Degraded=True (failed analysis, rollback, progress deadline)   -> Degraded
--   5. a stage, rollout or rollback in flight (status.rollout)        -> Progressing
--   6. a retrain in flight (status.activeRetrain or Retraining=True)  -> Progressing
--   7. Ready not True yet (Initializing)                              -> Progressing
--   8. otherwise                                                      -> Healthy, naming the served version
local hs = {}

local function text(value)
  if type(value) == "string" and value ~= "" then
    return value
  end
  return nil
end

local function findCondition(conditions, conditionType)
  if type(conditions) ~= "table" then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if type(condition) == "table" and condition.type == conditionType then
      return condition
    end
  end
  return nil
end

-- "Reason: message", as kubectl describe shows a condition.
local function explain(condition)
  local reason = text(condition.reason) or (tostring(condition.type) .. "=" .. tostring(condition.status))
  local message = text(condition.message)
  if message ~= nil then
    return reason .. ": " .. message
  end
  return reason
end

local metadata = obj.metadata
if type(metadata) ~= "table" then
  metadata = {}
end
local spec = obj.spec
if type(spec) ~= "table" then
  spec = {}
end
local status = obj.status
-- Integers arrive as numbers from the controller (and as strings from some decoders): tonumber takes both.
local generation = tonumber(metadata.generation)

local waiting = "waiting for the operator to report status"
if generation ~= nil then
  waiting = "waiting for the operator to observe generation " .. tostring(generation)
end

-- 1. Nothing observed yet.
if type(status) ~= "table" then
  hs.status = "Progressing"
  hs.message = waiting
  return hs
end

local conditions = status.conditions
local ready = findCondition(conditions, "Ready")

local function observes(value)
  local observed = tonumber(value)
  return observed ~= nil and observed >= generation
end

-- A failure reported outside a full reconcile updates only Ready (with its observedGeneration), so either
-- field shows that this generation was seen.
if generation ~= nil and not observes(status.observedGeneration)
    and not (ready ~= nil and observes(ready.observedGeneration)) then
  hs.status = "Progressing"
  hs.message = waiting
  return hs
end

local served = "no served model version is known yet"
if type(status.currentModel) == "table" and text(status.currentModel.version) ~= nil then
  served = "serving model version " .. status.currentModel.version
end

-- 2. The loop cannot work: bad spec, missing permissions, a dependency down.
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = explain(ready)
  return hs
end

-- 3. Suspended by the user.
if spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true, nothing is launched; " .. served
  return hs
end

-- 4. A version failed in production (it stays so until a version passes analysis or a rollback-to succeeds).
local degraded = findCondition(conditions, "Degraded")
local rolledOut = findCondition(conditions, "RolledOut")
if degraded ~= nil and degraded.status == "True" then
  local message = explain(degraded)
  if rolledOut ~= nil and text(rolledOut.reason) ~= nil and rolledOut.reason ~= degraded.reason then
    message = message .. "; " .. explain(rolledOut)
  end
  if type(status.rollout) ~= "table" then
    message = message .. "; " .. served
  end
  hs.status = "Degraded"
  hs.message = message
  return hs
end

-- 5. A rollout, its analysis or a requested rollback in flight.
local rollout = status.rollout
if type(rollout) == "table" then
  local version = text(rollout.version) or "a new version"
  local message = "rolling out " .. version
  if rollout.kind == "Rollback" then
    message = "rolling back to " .. version
  elseif rollout.phase == "Staging" then
    message = "judging " .. version .. " beside the champion on live labels"
  end
  if text(rollout.phase) ~= nil then
    message = message .. " (" .. rollout.phase .. ")"
  end
  if rolledOut ~= nil then
    message = message .. ": " .. explain(rolledOut)
  end
  hs.status = "Progressing"
  hs.message = message
  return hs
end

-- 6. A retrain Job running or its artifacts being verified.
local retraining = findCondition(conditions, "Retraining")
local active = status.activeRetrain
if type(active) == "table" or (retraining ~= nil and retraining.status == "True") then
  local message = "retraining"
  if type(active) == "table" and text(active.version) ~= nil then
    message = "retraining " .. active.version
  end
  if retraining ~= nil then
    message = message .. ": " .. explain(retraining)
  end
  hs.status = "Progressing"
  hs.message = message .. "; " .. served
  return hs
end

-- 7. First checks of Prometheus, the artifact store and the target not done yet.
if ready == nil or ready.status ~= "True" then
  local message = "waiting for the first check of the loop's dependencies"
  if ready ~= nil then
    message = message .. " (" .. explain(ready) .. ")"
  end
  hs.status = "Progressing"
  hs.message = message
  return hs
end

-- 8. Healthy: the loop works. What needs a look without being a failure of the loop goes in the message.
local notes = { served }
local healthy = findCondition(conditions, "Healthy")
if healthy ~= nil and healthy.status == "False" then
  table.insert(notes, "metrics: " .. explain(healthy))
end
local retrainFailures = {
  RetrainJobFailed = true,
  RetrainJobDeadlineExceeded = true,
  RetrainJobMissing = true,
  ManifestMissing = true,
  ArtifactDigestMismatch = true,
  ArtifactsInvalid = true,
  ManifestTampered = true,
  AccessDenied = true,
  JobNameTaken = true,
  JobCreateRefused = true,
  JobCreateFailed = true,
}
if retraining ~= nil and retraining.status == "False" and retrainFailures[retraining.reason] then
  table.insert(notes, "last retrain failed: " .. explain(retraining))
end
local validated = findCondition(conditions, "Validated")
if validated ~= nil and validated.status == "False" and validated.reason == "GatesFailed" then
  table.insert(notes, "candidate rejected: " .. explain(validated))
end
if rolledOut ~= nil and (rolledOut.reason == "StageLost" or rolledOut.reason == "StageInconclusive") then
  table.insert(notes, "candidate rejected by its stage: " .. explain(rolledOut))
end
if rolledOut ~= nil and (rolledOut.reason == "PromotionRefused" or rolledOut.reason == "RollbackRefused"
    or rolledOut.reason == "ConflictingRequests") then
  table.insert(notes, explain(rolledOut))
end
if text(status.recommendedVersion) ~= nil then
  table.insert(notes, status.recommendedVersion .. " passed its gates and awaits promotion")
end
hs.status = "Healthy"
hs.message = table.concat(notes, "; ")
return hs
