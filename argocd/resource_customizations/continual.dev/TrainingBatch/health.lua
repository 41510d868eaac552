-- Argo CD health of a TrainingBatch (continual.dev/v1alpha1), read from the status the operator writes.
-- Healthy: Succeeded. Progressing: not yet seen, Queued (also after a preemption and while a retry backs
-- off), Training. Degraded: Failed (permanently, out of retries, steps not contiguous, an invalid spec).
-- The message is the operator's own status message: what happened and, for failures, what to do.
local hs = {}
local status = obj.status

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to queue the batch"
  return hs
end

local function said(fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return fallback
end

if status.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = said("Trained")
  return hs
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (status.reason or "Failed") .. ": " .. said("the batch failed")
  return hs
end

if status.phase == "Training" then
  hs.status = "Progressing"
  hs.message = "Training: " .. said("attempt " .. tostring(status.attempts or 1))
  return hs
end

if status.phase == "Queued" then
  hs.status = "Progressing"
  hs.message = "Queued: " .. said("waits for the batches before it")
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(status.phase)
return hs
