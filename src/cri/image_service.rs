//! ImageService: the trait impl, dispatching each RPC to `images`.

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::{CriService, images};

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        images::list(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        images::status(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        images::pull(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        images::remove(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        images::fs_info(self, request.into_inner())
            .await
            .map(Response::new)
    }
}
