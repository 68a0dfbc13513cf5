//! The handlers of the RPCs after an enrollment (RemoveCard, GetClickToPayProfile,
//! UpdateConsumer, UpdateBillingAddress, OptOut, WithdrawOptOut): convert and validate, check
//! the caller's programs against the card's before anything is done, run the use case (those
//! that change something in their own task, so that a caller going away does not leave the card
//! locked or a key half done), and map errors in one place.

use super::auth::Caller;
use super::policy::Rpc;
use super::service::{EnrollmentApi, caller};
use super::{convert, deadline, status};
use crate::app::{AppError, CheckedProgram, Source};
use crate::domain::CardContractId;
use crate::proto::v1::{
    GetClickToPayProfileRequest, GetClickToPayProfileResponse, OptOutRequest, OptOutResponse,
    RemoveCardRequest, RemoveCardResponse, UpdateBillingAddressRequest,
    UpdateBillingAddressResponse, UpdateConsumerRequest, UpdateConsumerResponse,
    WithdrawOptOutRequest, WithdrawOptOutResponse,
};
use std::future::Future;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

fn invalid(v: Vec<crate::app::FieldViolation>) -> Status {
    status::to_status(&AppError::InvalidArgument(v))
}

/// Runs `work` in its own task, in the call's span: it finishes even when the caller goes away.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, AppError>> + Send + 'static,
) -> Result<T, AppError> {
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|e| AppError::Internal(format!("task failed: {e}")))?
}

/// Refuses the call unless each of `programs` (the card's, if it has one) is the caller's to use.
fn may_act_under(
    caller: &Caller,
    card: CardContractId,
    programs: &[String],
    rpc: Rpc,
) -> Result<(), Status> {
    let span = tracing::Span::current();
    span.record("card", card.get());
    for program in programs {
        span.record("program", program.as_str());
        caller.may_see(program, rpc)?;
    }
    Ok(())
}

impl EnrollmentApi {
    /// Refuses the call when the card's record belongs to a program the caller may not use (a
    /// card without a record has no program yet: the use case answers for it). The program
    /// checked, which the use case holds the record it acts on to (read under the card's lock:
    /// an enrollment under another program landing meanwhile is not acted on).
    async fn may_act_on(
        &self,
        caller: &Caller,
        card: CardContractId,
        rpc: Rpc,
    ) -> Result<CheckedProgram, Status> {
        let program = self
            .app
            .program_of(card)
            .await
            .map_err(|e| status::to_status(&e))?;
        may_act_under(caller, card, program.as_slice(), rpc)?;
        Ok(CheckedProgram::Was(program))
    }

    pub(super) async fn remove_card_inner(
        &self,
        request: Request<RemoveCardRequest>,
    ) -> Result<Response<RemoveCardResponse>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::RemoveCard)?;
        let mut command =
            convert::remove_command(request.into_inner(), caller.identity.to_string())
                .map_err(invalid)?;
        command.checked = self
            .may_act_on(&caller, command.card_contract_id, Rpc::RemoveCard)
            .await?;
        let app = self.app.clone();
        let removed = detached(async move { app.remove_card(command, deadline).await })
            .await
            .map_err(|e| status::from_parts(caller.redact(e.parts())))?;
        Ok(Response::new(RemoveCardResponse {
            enrollment: Some(convert::into_enrollment(removed.record, Source::Store)),
            replayed: removed.replayed,
        }))
    }

    pub(super) async fn profile_inner(
        &self,
        request: Request<GetClickToPayProfileRequest>,
    ) -> Result<Response<GetClickToPayProfileResponse>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::GetClickToPayProfile)?;
        let card = convert::card_id(request.get_ref().card_contract_id).map_err(invalid)?;
        let checked = self
            .may_act_on(&caller, card, Rpc::GetClickToPayProfile)
            .await?;
        let profile = self
            .app
            .click_to_pay_profile(card, &checked, deadline)
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(GetClickToPayProfileResponse {
            profile: Some(convert::profile(profile)),
        }))
    }

    pub(super) async fn update_consumer_inner(
        &self,
        request: Request<UpdateConsumerRequest>,
    ) -> Result<Response<UpdateConsumerResponse>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::UpdateConsumer)?;
        let (card, consumer) =
            convert::update_consumer_request(request.into_inner()).map_err(invalid)?;
        let checked = self.may_act_on(&caller, card, Rpc::UpdateConsumer).await?;
        let app = self.app.clone();
        let record = detached(async move {
            app.update_consumer(card, consumer, &checked, deadline)
                .await
        })
        .await
        .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(UpdateConsumerResponse {
            enrollment: Some(convert::into_enrollment(record, Source::Store)),
        }))
    }

    pub(super) async fn update_billing_address_inner(
        &self,
        request: Request<UpdateBillingAddressRequest>,
    ) -> Result<Response<UpdateBillingAddressResponse>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::UpdateBillingAddress)?;
        let (card, address) =
            convert::update_billing_address_request(request.into_inner()).map_err(invalid)?;
        let checked = self
            .may_act_on(&caller, card, Rpc::UpdateBillingAddress)
            .await?;
        let app = self.app.clone();
        let record = detached(async move {
            app.update_billing_address(card, address, &checked, deadline)
                .await
        })
        .await
        .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(UpdateBillingAddressResponse {
            enrollment: Some(convert::into_enrollment(record, Source::Store)),
        }))
    }

    pub(super) async fn opt_out_inner(
        &self,
        request: Request<OptOutRequest>,
    ) -> Result<Response<OptOutResponse>, Status> {
        let deadline = deadline::of(&request, self.default_deadline);
        let caller = caller(&request, Rpc::OptOut)?;
        let card = convert::card_id(request.get_ref().card_contract_id).map_err(invalid)?;
        let checked = self.may_act_on(&caller, card, Rpc::OptOut).await?;
        let app = self.app.clone();
        let opted_out = detached(async move { app.opt_out(card, &checked, deadline).await })
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(OptOutResponse {
            enrollment: Some(convert::into_enrollment(opted_out.record, Source::Store)),
            opt_out_time: Some(convert::timestamp(opted_out.since_ms)),
        }))
    }

    pub(super) async fn withdraw_opt_out_inner(
        &self,
        request: Request<WithdrawOptOutRequest>,
    ) -> Result<Response<WithdrawOptOutResponse>, Status> {
        let caller = caller(&request, Rpc::WithdrawOptOut)?;
        let card = convert::card_id(request.get_ref().card_contract_id).map_err(invalid)?;
        // The card's program and the opt-outs' own (an opt-out outlives the card's record, and
        // may have been given through another card of the profile): the caller needs them all.
        let plan = self
            .app
            .plan_withdrawal(card)
            .await
            .map_err(|e| status::to_status(&e))?;
        may_act_under(&caller, card, &plan.programs, Rpc::WithdrawOptOut)?;
        let withdrawn = self
            .app
            .withdraw(plan)
            .await
            .map_err(|e| status::to_status(&e))?;
        Ok(Response::new(WithdrawOptOutResponse { withdrawn }))
    }
}
