"""gRPC plumbing for the jobs service: translates requests to JobsDomain calls and back.
No logic lives here; errors raised by the domain are mapped by the shared interceptor."""

from __future__ import annotations

from classforge.v1 import jobs_service_pb2 as pb
from classforge.v1 import jobs_service_pb2_grpc as pb_grpc
from services.common import auth
from services.jobs.domain import JobsDomain


class JobsServicer(pb_grpc.JobsServiceServicer):
    def __init__(self, domain: JobsDomain):
        self.domain = domain

    def SubmitJob(self, request: pb.SubmitJobRequest, context) -> pb.SubmitJobResponse:
        caller = auth.current_identity()  # None without authentication: the job gets no owner
        job = self.domain.submit(request.spec, request.request_id, owner=caller.subject if caller else "")
        return pb.SubmitJobResponse(job_id=job.job_id)

    def GetJob(self, request: pb.GetJobRequest, context) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=self.domain.get(request.job_id))

    def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        jobs, token = self.domain.list(request.status, request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=self.domain.cancel(request.job_id, request.reason,
                                                           caller=auth.current_identity()))

    def WatchJob(self, request: pb.WatchJobRequest, context):
        for event, job in self.domain.watch(request.job_id, context.is_active,
                                            heartbeats=request.include_heartbeats):
            yield pb.WatchJobResponse(event=event, job=job)
