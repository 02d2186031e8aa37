//! ImageService: the trait impl, dispatching each RPC to `images`.

use super::api::image_service_server::ImageService;
use super::api::*;
use tonic::{Request, Response, Status};

use super::{CriService, ReplyStream, images, stream_in_chunks};

#[tonic::async_trait]
impl ImageService for CriService {
    type StreamImagesStream = ReplyStream<StreamImagesResponse>;

    async fn stream_images(
        &self,
        request: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = request.into_inner().filter;
        let images = images::list(self, ListImagesRequest { filter })
            .await?
            .images;
        Ok(Response::new(stream_in_chunks(images, |images| {
            StreamImagesResponse { images }
        })))
    }

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
